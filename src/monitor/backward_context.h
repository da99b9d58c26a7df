#pragma once
// Where the autograd engine stands on the calling thread.

namespace gradflow::detail {

// The graph task whose backward this thread is running, as an opaque key; nullptr outside
// backward. A forward that runs inside a backward recomputes what a checkpointed segment
// discarded (torch.utils.checkpoint): it belongs to the step whose backward runs it.
const void* current_backward();

}  // namespace gradflow::detail
