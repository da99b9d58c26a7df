#include "report/svg.h"

#include <cmath>
#include <regex>

#include <gtest/gtest.h>

namespace gradflow::detail {
namespace {

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Names cut from the left stay distinct: where two would read the same, each shows where it differs.
TEST(Svg, ShortNamesWithinAChartAreDistinct) {
  const std::vector<std::string> names = {"transformer.encoder.layers.0.self_attn.in_proj_weight",
                                          "transformer.decoder.layers.0.self_attn.in_proj_weight", "fc",
                                          "a.very.long.but.unique.module.path.that.is.long.weight", "fc"};
  const auto shown = distinct_short_names(names, 38);
  ASSERT_EQ(shown.size(), names.size());
  EXPECT_EQ(shown[0], "\u2026encoder\u20260.self_attn.in_proj_weight");
  EXPECT_EQ(shown[1], "\u2026decoder\u20260.self_attn.in_proj_weight");
  EXPECT_EQ(shown[2], "fc");
  EXPECT_EQ(shown[3], "\u2026nique.module.path.that.is.long.weight");
  EXPECT_EQ(shown[4], "fc");  // the same name, the same entry
  for (std::size_t i = 0; i < names.size(); ++i)
    for (std::size_t j = 0; j < names.size(); ++j) {
      if (names[i] != names[j]) {
        EXPECT_NE(shown[i], shown[j]) << names[i] << " / " << names[j];
      }
    }
  // A chart's legend shows them so.
  LineChart c;
  for (std::size_t i = 0; i < 2; ++i) {
    LineSeries s;
    s.label = names[i];
    s.x = {1, 2};
    s.y = {1, 2};
    c.series.push_back(s);
  }
  const std::string svg = render(c);
  EXPECT_EQ(count(svg, "class=\"legend\">\u2026encoder\u2026"), 1) << svg;
  EXPECT_EQ(count(svg, "class=\"legend\">\u2026decoder\u2026"), 1) << svg;
}

LineChart two_series() {
  LineChart c;
  c.title = "t";
  LineSeries a, b;
  a.label = "a<b";
  a.x = {1, 2, 3};
  a.y = {1, 10, 100};
  b.label = "b";
  b.x = {1, 2, 3};
  b.y = {5, std::nan(""), 50};  // a gap
  b.colour = 4;
  c.series = {a, b};
  return c;
}

TEST(Svg, EachSeriesIsOnePathWithItsPaletteColourAndEscapedLabel) {
  const std::string svg = render(two_series());
  EXPECT_EQ(count(svg, "<path "), 2);
  EXPECT_NE(svg.find("stroke=\"" + palette(0) + "\""), std::string::npos);
  EXPECT_NE(svg.find("stroke=\"" + palette(4) + "\""), std::string::npos);  // the colour asked for, not the position
  EXPECT_EQ(svg.find("stroke=\"" + palette(1) + "\""), std::string::npos);
  EXPECT_NE(svg.find("a&lt;b"), std::string::npos);
  EXPECT_EQ(svg.find("a<b"), std::string::npos);
  // The NaN breaks series b: its path has two moves and no line across the gap.
  const std::regex b_path("<path d=\"([^\"]*)\"[^>]*stroke=\"" + palette(4) + "\"");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, b_path));
  EXPECT_EQ(count(m[1].str(), "M"), 2);
  EXPECT_EQ(count(m[1].str(), "L"), 0);
  // One marker with a hover title per finite point: 3 + 2.
  EXPECT_EQ(count(svg, "<circle"), 5);
}

TEST(Svg, LogAxisPlacesDecadesEvenly) {
  const std::string svg = render(two_series());
  std::smatch m;
  const std::regex a_path("<path d=\"M([0-9.]+),([0-9.]+) L([0-9.]+),([0-9.]+) L([0-9.]+),([0-9.]+) \"");
  ASSERT_TRUE(std::regex_search(svg, m, a_path));
  const double y1 = std::stod(m[2]), y10 = std::stod(m[4]), y100 = std::stod(m[6]);
  EXPECT_NEAR(y1 - y10, y10 - y100, 0.11);  // 1 -> 10 -> 100 are equal steps on a log scale
  EXPECT_GT(y1, y10);                       // larger values are higher up
}

TEST(Svg, HeatmapHasOneCellPerRowAndColumnAndGreysMissingOnes) {
  Heatmap h;
  h.title = "map";
  h.rows = {"h.2", "h.1"};
  h.cols = {"0", "1", "2"};
  h.log10_values = {{-1, -2, std::nan("")}, {-3, -4, -5}};
  const std::string svg = render(h);
  EXPECT_EQ(count(svg, "<title>h.") , 6);
  EXPECT_EQ(count(svg, "fill=\"#dddddd\""), 1);
  EXPECT_NE(svg.find("h.2 at 2: not recorded or zero"), std::string::npos);
  EXPECT_NE(svg.find("h.1 at 0: 0.001"), std::string::npos);
}

// The legend stands beside the plot, never over a line, and the chart grows to hold all of it.
TEST(Svg, ALegendNeverCoversThePlot) {
  LineChart c;
  c.title = "many";
  for (int i = 0; i < 30; ++i) {
    LineSeries s;
    s.label = "layer " + std::to_string(i);
    s.x = {1, 2};
    s.y = {1.0 + i, 2.0 + i};
    c.series.push_back(s);
  }
  const std::string svg = render(c);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, std::regex("<rect x=\"(\\d+)\" y=\"(\\d+)\" width=\"(\\d+)\" height=\"(\\d+)\" class=\"plot\"")));
  const int plot_right = std::stoi(m[1]) + std::stoi(m[3]);
  ASSERT_TRUE(std::regex_search(svg, m, std::regex("viewBox=\"0 0 (\\d+) (\\d+)\"")));
  const int height = std::stoi(m[2]);
  const std::regex legend("<text x=\"(\\d+)\" y=\"(\\d+)\" class=\"legend\">");
  int entries = 0;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), legend); it != std::sregex_iterator(); ++it, ++entries) {
    EXPECT_GT(std::stoi((*it)[1]), plot_right);
    EXPECT_LT(std::stoi((*it)[2]), height);
  }
  EXPECT_EQ(entries, 30);
}

TEST(Svg, EmptyChartsSayTheyHaveNoData) {
  Heatmap h;
  h.title = "empty";
  EXPECT_NE(render(h).find("no data to plot"), std::string::npos);
}

}  // namespace
}  // namespace gradflow::detail
