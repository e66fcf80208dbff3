// Text files built into derpbench (see embed_text.cc and bench/meson.build): Chart.js from
// Debian's libjs-chart.js, and the report page's script (report_page.js).
#pragma once

#include <string_view>

namespace derp::bench::embedded {

std::string_view chart_js();
std::string_view report_page_js();

}  // namespace derp::bench::embedded
