#include "report/report_model.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "util/text.h"

namespace gradflow::detail {

std::optional<double> log10_of(const std::optional<Attenuation>& a) {
  if (a && a->log10) return a->log10;
  return std::nullopt;
}

bool diverged(const RunRecord& r) {
  for (double l : r.loss)
    if (!std::isfinite(l)) return true;
  return has_any(r.findings, {FindingKind::non_finite});
}

double tail_mean(const std::vector<double>& v) {
  const std::size_t n = v.size();
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  const std::size_t k = std::max<std::size_t>(n / 10, 1);
  double s = 0;
  for (std::size_t i = n - k; i < n; ++i) s += v[i];
  return s / static_cast<double>(k);
}

double tail_loss(const RunRecord& r) { return tail_mean(r.loss); }

bool learned(const RunRecord& r) {
  const double t = tail_loss(r);
  return std::isfinite(t) && t < 0.5 * r.baseline_loss;
}

std::string finding_kinds_text(const RunRecord& r) {
  std::set<std::string> kinds;
  for (const auto& f : r.findings) kinds.insert(to_string(f.kind));
  return kinds.empty() ? "none" : join({kinds.begin(), kinds.end()});
}

double norm_at(const StepRecord& st, int series) {
  const Record* r = st.find(series);
  if (!r) return std::numeric_limits<double>::quiet_NaN();
  if (r->grad.nonfinite > 0) return std::numeric_limits<double>::infinity();
  return r->grad.norm();
}

std::vector<int> block_series(const RunRecord& r) {
  std::set<int> blocks;
  for (const auto& l : r.layers)
    if (l.kind == kAttentionLayerKind) blocks.insert(l.depth);
  std::vector<int> out;
  for (int b : blocks) {
    const LayerEntry* last = nullptr;
    for (const auto& l : r.layers)
      if (l.depth == b) last = &l;
    const int s = r.trace.find(last->name + ".weight");
    if (s >= 0) out.push_back(s);
  }
  return out;
}

std::vector<double> norms_at_init(const RunRecord& r, const std::vector<int>& series) {
  std::vector<double> out;
  if (r.trace.steps().empty()) return out;
  for (int s : series) out.push_back(norm_at(r.trace.steps().front(), s));
  return out;
}

namespace {

RankingRow row_of(const Comparison& c, std::size_t i, const std::optional<Attenuation>& init,
                  const std::optional<Attenuation>& end) {
  const RunRecord& r = c.runs[i];
  RankingRow row;
  row.run = &r;
  row.index = static_cast<int>(i);
  row.init = init;
  row.end = end;
  row.learned = learned(r);
  row.findings = finding_kinds_text(r);
  return row;
}

void number(std::vector<RankingRow>& rows) {
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i].rank = static_cast<int>(i + 1);
}

}  // namespace

std::vector<RankingRow> depth_ranking(const Comparison& c) {
  std::vector<RankingRow> rows;
  for (std::size_t i = 0; i < c.runs.size(); ++i)
    if (!c.runs[i].traits.recurrent) rows.push_back(row_of(c, i, c.runs[i].summary.depth, c.runs[i].summary.depth_final));
  std::stable_sort(rows.begin(), rows.end(), [](const RankingRow& a, const RankingRow& b) {
    const auto la = log10_of(a.init), lb = log10_of(b.init);
    return (la ? std::abs(*la) : 1e9) < (lb ? std::abs(*lb) : 1e9);
  });
  number(rows);
  return rows;
}

std::vector<RankingRow> time_ranking(const Comparison& c) {
  std::vector<RankingRow> rows;
  for (std::size_t i = 0; i < c.runs.size(); ++i)
    if (c.runs[i].traits.recurrent) rows.push_back(row_of(c, i, c.runs[i].summary.time, c.runs[i].summary.time_final));
  std::stable_sort(rows.begin(), rows.end(), [](const RankingRow& a, const RankingRow& b) {
    const auto la = log10_of(a.end), lb = log10_of(b.end);
    return (la ? *la : -1e9) > (lb ? *lb : -1e9);
  });
  number(rows);
  return rows;
}

}  // namespace gradflow::detail
