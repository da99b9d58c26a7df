// `gradflow bench` on the small MLP: the records it writes and how their figures relate.
#include <cmath>
#include <filesystem>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_harness.h"

namespace gradflow::test {
namespace {

TEST(BenchCli, TheSmallMlpsRecordsCountItsTensorsAndSplitTheCostPerTensor) {
  const std::string d = temp_dir("bench");
  const auto r = run_cli({"bench", "--quick", "--models", "mlp-small", "--reps", "1", "--json", d + "/bench.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("mlp-small"), std::string::npos);
  const auto records = nlohmann::json::parse(slurp(d + "/bench.json"));
  ASSERT_EQ(records.size(), 7u);
  // depth 10: 10 weights and 10 biases; 10 layer outputs; 9 hidden states tapped.
  const std::map<std::string, int> tensors = {{"params", 20}, {"params+acts", 30}, {"full", 39}, {"params+acts+out", 30}};
  for (const auto& rec : records) {
    SCOPED_TRACE(rec.dump());
    EXPECT_EQ(rec["model"], "mlp-small");
    const std::string mode = rec["mode"];
    if (mode == "sharpness") {
      // One measurement's cost, in the forward+backward passes and bare steps it equals.
      EXPECT_GT(rec["hessian_vector_products"].get<int>(), 1);
      EXPECT_NEAR(rec["backward_passes"].get<double>(), rec["measure_ms"].get<double>() / rec["backward_ms"].get<double>(), 1e-9);
      EXPECT_GT(rec["bare_steps"].get<double>(), 0.0);
      continue;
    }
    EXPECT_EQ(rec["spec"], "mlp:depth=10,width=64,act=relu,init=he_normal");
    EXPECT_GT(rec["bare_ms"].get<double>(), 0.0);
    if (mode == "params+acts/10" || mode == "params+acts/10+out") {
      EXPECT_FALSE(rec.contains("tensors_per_step"));
      continue;
    }
    ASSERT_TRUE(tensors.count(mode));
    EXPECT_EQ(rec["tensors_per_step"].get<int>(), tensors.at(mode));
    const double per_tensor = rec["overhead"].get<double>() * rec["bare_ms"].get<double>() * 1000 / tensors.at(mode);
    EXPECT_NEAR(rec["overhead_us_per_tensor"].get<double>(), per_tensor, 1e-9 * (1 + std::fabs(per_tensor)));
    EXPECT_GT(rec["kernel_us_per_tensor"].get<double>(), 0.0);
    if (mode == "full") {
      EXPECT_FALSE(rec.contains("fixed_us_per_tensor"));  // taps add forward passes: no fixed share to give
    } else {
      EXPECT_NEAR(rec["fixed_us_per_tensor"].get<double>(),
                  rec["overhead_us_per_tensor"].get<double>() - rec["kernel_us_per_tensor"].get<double>(), 1e-9);
    }
  }
  std::filesystem::remove_all(d);
}

}  // namespace
}  // namespace gradflow::test
