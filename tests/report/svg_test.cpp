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
