// derpbench's commands on run files: `derpbench report` (the HTML page or the Markdown capacity
// table), `derpbench size` (shards and nodes for a target), and the run files themselves: read
// with errors naming file and line, appended to by the workloads' --out.
#pragma once

#include <string>
#include <vector>

#include "bench/report.hh"
#include "bench/run_record.hh"
#include "core/result.hh"

namespace derp::bench {

// Every record of every file, in order; the first bad file or line ends it with its error.
result<std::vector<run_record>, std::string> read_run_files(const std::vector<std::string>& paths);

// Appends the records to path (JSON Lines), creating it; the error names the file.
result<bool, std::string> append_run_file(const std::string& path, const std::vector<run_record>& records);

// The HTML report of these records at path.
result<bool, std::string> write_html_report(const std::string& path, const std::vector<run_record>& records,
                                            const report_options& options);

// `derpbench report ...` and `derpbench size ...`: argv from the command's name on.
int report_command(int argc, char** argv);
int size_command(int argc, char** argv);

}  // namespace derp::bench
