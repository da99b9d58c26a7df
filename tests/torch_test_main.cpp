#include <gtest/gtest.h>

#include "gradflow/threads.h"

int main(int argc, char** argv) {
  // ctest runs test processes side by side on 2 cores: one thread each.
  gradflow::set_threads(1, 1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
