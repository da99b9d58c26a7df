#pragma once
/// \file
/// Gradient flow in the rigorous sense: the ODE dθ/dt = −∇L(θ), integrated with an adaptive
/// Runge–Kutta method, and gradient descent as its Euler discretisation. No LibTorch.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace gradflow {

inline constexpr const char* kFlowSchema = "gradflow.flow/1";

/// Returns L(θ) and writes ∇L(θ) into `grad` (resized by the callee if needed).
using LossGradient = std::function<double(const std::vector<double>& theta, std::vector<double>& grad)>;

/// Error control of the integrator.
struct FlowOptions {
  double rtol = 1e-9;
  double atol = 1e-12;
  double first_step = 1e-3;
  std::int64_t max_steps = 10000000;
};

/// θ and L(θ) at one time.
struct FlowPoint {
  double t = 0;
  double loss = 0;
  std::vector<double> theta;
};

struct FlowStats {
  std::int64_t accepted = 0, rejected = 0, evaluations = 0;
};

/// Integrates dθ/dt = −∇L(θ) from θ(0) = `theta0` with Dormand–Prince 5(4) (local error
/// control, FSAL) and returns θ and L at each of `times` (ascending, from 0). Throws
/// gradflow::Error if the loss turns non-finite or the step count runs out.
std::vector<FlowPoint> gradient_flow(const LossGradient& f, const std::vector<double>& theta0,
                                     const std::vector<double>& times, const FlowOptions& options = {},
                                     FlowStats* stats = nullptr);

/// θ_{k+1} = θ_k − lr·∇L(θ_k) for `steps` steps: θ_k and L(θ_k) for k = 0..steps (t = k·lr).
/// Stops early (returning what it has) once the loss is no longer finite.
std::vector<FlowPoint> gradient_descent(const LossGradient& f, const std::vector<double>& theta0, double lr,
                                        std::int64_t steps);

/// Gradient descent with one learning rate, measured against the flow at t = k·lr.
struct DescentVsFlow {
  double lr = 0;
  std::int64_t steps = 0;
  std::vector<double> t, distance, loss_gd, loss_flow;  ///< per GD step
  double max_distance = 0, final_distance = 0;          ///< ‖θ_GD(k) − θ(k·lr)‖
  double max_loss_gap = 0, final_loss_gap = 0;          ///< |L_GD − L_flow|
  /// First time GD leaves the flow: the gap exceeds 10% of how far the flow has moved from θ(0),
  /// or GD's loss rises between two steps (oscillation). Empty if it never does.
  std::optional<double> departs_at;
  std::string departs_why;
  bool diverged = false;  ///< GD's loss became non-finite or above 10x its start
  std::vector<std::pair<double, double>> path;  ///< projected on the picture's plane (filled by callers)
  /// λ_max of the Hessian at some of GD's steps (t = k·lr), when measured (filled by callers).
  std::vector<double> sharpness_t, sharpness;
  /// First measured time at which lr·λ_max reached 2: GD is past the stability bound there.
  std::optional<double> edge_at;

  /// Where the sharpness ended: the mean λ_max of the measurements in the last fifth of the run
  /// (at the edge of stability GD's sharpness alternates between two values about 2/lr, so one
  /// measurement is not the level). Empty when none was taken there.
  std::optional<double> final_sharpness() const;
};

/// Runs gradient descent with each learning rate for round(T/lr) steps and compares it with the
/// flow sampled at every k·lr (the flow is integrated once, at the union of those times).
std::vector<DescentVsFlow> compare_descent_with_flow(const LossGradient& f, const std::vector<double>& theta0,
                                                     double time, const std::vector<double>& lrs,
                                                     const FlowOptions& options, std::vector<FlowPoint>* flow_out,
                                                     FlowStats* stats);

/// Least-squares slope of log(max distance) against log(lr) over the runs that did not diverge:
/// about 1 for small learning rates (Euler is a first-order method).
std::optional<double> fitted_order(const std::vector<DescentVsFlow>& runs);

/// The loss on the plane θ(0) + a·d1 + b·d2 (d1, d2 random, scaled per layer to the layer's
/// weights), with the negative gradient projected on the plane.
struct FlowPlane {
  int grid = 0;         ///< grid × grid points
  double extent = 1.0;  ///< a and b run over [−extent, extent]
  std::vector<double> loss;    ///< row-major: index j·grid + i for b_j, a_i
  std::vector<double> da, db;  ///< −∇L in plane coordinates at each point
};

/// Everything `gradflow flow` measured.
struct FlowResult {
  std::string spec, task;
  double time = 0;
  std::uint64_t seed = 0;
  std::int64_t parameters = 0, samples = 0;
  std::vector<double> flow_t, flow_loss;                    ///< the flow, sampled
  std::vector<std::pair<double, double>> flow_path;         ///< projected on the plane
  std::vector<DescentVsFlow> runs;
  std::optional<double> order;
  FlowStats stats;
  FlowPlane plane;
  std::vector<double> flow_sharpness_t, flow_sharpness;     ///< λ_max along the flow, when measured
  /// Cost of the sharpness: measurements, Hessian-vector products (two backward passes each), seconds.
  std::int64_t sharpness_measurements = 0, sharpness_products = 0;
  double sharpness_seconds = 0;
  double wall_seconds = 0;
};

/// flow.json text and back (throws gradflow::Error naming what is wrong).
std::string flow_to_json(const FlowResult& result);
FlowResult flow_from_json(const std::string& text, const std::string& where = "flow.json");
/// The flow's section of a report (table, loss chart, plane picture), and a whole page.
std::string flow_section_html(const FlowResult& result);
std::string flow_page_html(const FlowResult& result);

}  // namespace gradflow
