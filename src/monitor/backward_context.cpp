#include "monitor/backward_context.h"

#include <torch/csrc/autograd/graph_task.h>

namespace gradflow::detail {

// The engine keeps the graph task it runs in a thread-local; its execution map is the one
// piece of it LibTorch exports (1.13 and 2.x), and it exists exactly while the task runs.
const void* current_backward() { return torch::autograd::get_current_graph_task_exec_info(); }

}  // namespace gradflow::detail
