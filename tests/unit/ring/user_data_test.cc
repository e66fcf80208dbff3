// user_data packing: every field survives, at its limits.
#include <doctest/doctest.h>

#include "ring/user_data.hh"

using namespace derp::ring;

TEST_CASE("user_data: op, slot and generation round-trip at their limits") {
    const op ops[] = {op::accept, op::recv, op::send, op::cancel, op::msg_ring, op::wake};
    const std::uint32_t slots[] = {0, 1, 12345, slot_max};
    const std::uint32_t gens[] = {0, 1, 0x80000000u, 0xffffffffu};
    for (op o : ops)
        for (auto slot : slots)
            for (auto gen : gens) {
                const auto fields = unpack_user_data(pack_user_data(o, slot, gen));
                CHECK(fields.kind == o);
                CHECK(fields.slot == slot);
                CHECK(fields.gen == gen);
            }
    // Distinct generations of one slot never collide.
    CHECK(pack_user_data(op::recv, 5, 1) != pack_user_data(op::recv, 5, 2));
    CHECK(pack_user_data(op::recv, 5, 1) != pack_user_data(op::send, 5, 1));
}
