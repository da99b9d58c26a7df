#include "util/text.h"

#include <gtest/gtest.h>

#include "report/figures.h"
#include "util/line_fit.h"

namespace gradflow::detail {
namespace {

TEST(Text, SplitKeepsEmptyItemsSoCallersCanRejectThem) {
  EXPECT_EQ(split("a,b,c"), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(split("a,,b"), (std::vector<std::string>{"a", "", "b"}));
  EXPECT_EQ(split(""), (std::vector<std::string>{""}));
  EXPECT_EQ(split("a,"), (std::vector<std::string>{"a", ""}));
  EXPECT_EQ(split("x=1;y", ';'), (std::vector<std::string>{"x=1", "y"}));
}

TEST(Text, JoinAndFirstLine) {
  EXPECT_EQ(join({"a", "b", "c"}), "a, b, c");
  EXPECT_EQ(join({}), "");
  EXPECT_EQ(join({"2", "3"}, ","), "2,3");
  EXPECT_EQ(join_alternatives({"a"}), "a");
  EXPECT_EQ(join_alternatives({"a", "b", "c"}), "a, b or c");
  EXPECT_EQ(first_line("one\ntwo\nthree"), "one");
  EXPECT_EQ(first_line("only"), "only");
  EXPECT_EQ(first_sentence("reading failed: no directory. This is an internal error. Check it.\ntrace"),
            "reading failed: no directory");
  EXPECT_EQ(first_sentence("version 1.5 is too old\ntrace"), "version 1.5 is too old");
}

TEST(Figures, AttenuationTextSaysBoundsOverflowAndMissingData) {
  Attenuation a;
  a.log10 = -15.26;
  EXPECT_EQ(attenuation_text(a, Markup::plain), "-15.3");
  a.underflow = true;
  EXPECT_EQ(attenuation_text(a, Markup::plain), "<= -15.3");
  EXPECT_EQ(attenuation_text(a, Markup::html), "&le; -15.3");
  EXPECT_EQ(attenuation_text(std::nullopt, Markup::plain), "n/a");
  EXPECT_EQ(attenuation_text(std::nullopt, Markup::plain, "-"), "-");
  Attenuation inf;
  inf.overflow = true;
  EXPECT_EQ(attenuation_text(inf, Markup::html), "non-finite");
  EXPECT_EQ(attenuation_text(Attenuation{}, Markup::plain), "no gradient");
}

TEST(Figures, GainLossAndOrders) {
  Attenuation a;
  a.log10 = -2.0;
  a.span = 4;
  EXPECT_EQ(gain_text(a), "0.316x");  // 10^(-2/4)
  EXPECT_EQ(gain_text(std::optional<double>()), "n/a");
  EXPECT_EQ(orders_text(0.04), "+0.0");
  EXPECT_EQ(orders_text(std::nullopt), "n/a");
  RunSummary s;
  EXPECT_EQ(loss_span(s, Markup::plain), "not recorded");  // no step: nothing to show, not a non-finite loss
  s.recorded_steps = 3;
  s.loss_first = 2.41;
  EXPECT_EQ(loss_span(s, Markup::plain), "2.41 -> non-finite");
  s.loss_last = 0.004081;
  EXPECT_EQ(loss_span(s, Markup::html), "2.41 &rarr; 0.00408");
}

TEST(LineFit, SlopeOfAnExactLineAndDegenerateInputs) {
  EXPECT_NEAR(*least_squares_slope({1, 2, 3, 4}, {1, 3, 5, 7}), 2.0, 1e-15);
  // Noisy points: the slope of the normal equations, computed here by hand.
  const std::vector<double> x = {0, 1, 2}, y = {0, 2, 1};
  EXPECT_NEAR(*least_squares_slope(x, y), 0.5, 1e-15);
  EXPECT_FALSE(least_squares_slope({1}, {2}).has_value());
  EXPECT_FALSE(least_squares_slope({3, 3}, {1, 2}).has_value());
}

}  // namespace
}  // namespace gradflow::detail
