#pragma once
/// \file
/// Everything a user of gradflow includes: `#include <gradflow/gradflow.h>`.

#include "gradflow/activation.h"
#include "gradflow/atomic_file.h"
#include "gradflow/data_parallel.h"
#include "gradflow/error.h"
#include "gradflow/diagnosis.h"
#include "gradflow/flow.h"
#include "gradflow/inspect.h"
#include "gradflow/model_traits.h"
#include "gradflow/monitor.h"
#include "gradflow/noise_scale.h"
#include "gradflow/option.h"
#include "gradflow/report.h"
#include "gradflow/run_record.h"
#include "gradflow/save_report.h"
#include "gradflow/summary.h"
#include "gradflow/tensor_stats.h"
#include "gradflow/threads.h"
#include "gradflow/trace.h"
#include "gradflow/trace_io.h"
#include "gradflow/trace_stream.h"
