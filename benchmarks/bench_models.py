"""What the Python benchmarks share: measure each model named on the command line, print a line
for each, keep every record as JSON."""
import json
import sys


def run_models(program, names, known, measure, line, json_path=""):
    """measure(name) -> a record; line(name, record) -> the text printed for it."""
    records = []
    for name in names.split(","):
        if name not in known:
            sys.exit(f"{program}: unknown model '{name}': name some of {', '.join(known)}")
        record = measure(name)
        records.append(record)
        print(line(name, record), flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(records, f, indent=1)
    return records
