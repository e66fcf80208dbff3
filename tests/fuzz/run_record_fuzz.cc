// libFuzzer target for what derpbench reads from files, servers and its command line: the first
// byte picks the parser (a run file's text, a server's /debug/varz, a sizing --target, a --node),
// the rest is its input. Each must give a verdict without crashing, and what it accepts must
// hold together (records read back as written; targets within their documented ranges).
#include <cstdint>
#include <string>
#include <string_view>

#include "bench/run_record.hh"
#include "bench/sizing.hh"
#include "core/assert.hh"

// Declared here (there is no libFuzzer header) to satisfy -Wmissing-declarations.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace derp::bench;
    if (size == 0) return 0;
    const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
    switch (data[0] % 4) {
        case 0: {
            auto records = parse_run_text(in, "fuzz.jsonl");
            if (!records) {
                DERP_ASSERT(records.error().rfind("fuzz.jsonl", 0) == 0);
                break;
            }
            DERP_ASSERT(!records->empty());
            // What was accepted writes out and reads back to the same records.
            std::string again;
            for (const auto& r : *records) {
                DERP_ASSERT(!r.run.empty() && r.loss >= 0 && r.loss <= 1);
                again += to_json_line(r);
            }
            auto reread = parse_run_text(again, "again");
            DERP_ASSERT(reread && reread->size() == records->size());
            break;
        }
        case 1: {
            const auto facts = parse_varz_facts(in);
            DERP_ASSERT(!facts.version.empty() && facts.shards >= 0);
            break;
        }
        case 2:
            if (auto t = parse_sizing_target(in, 567)) {
                DERP_ASSERT(t->clients >= 1 && t->headroom >= 0 && t->headroom < 1);
                DERP_ASSERT(t->packet_bytes >= 1 && t->packet_bytes <= 65536);
            }
            break;
        default:
            if (auto n = parse_node_shape(in)) DERP_ASSERT(n->shards >= 1 && n->memory_gib > 0);
            break;
    }
    return 0;
}
