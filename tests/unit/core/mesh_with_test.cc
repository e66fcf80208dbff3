// -mesh-with parsing (core/mesh_with): derper's three entry forms and the errors.
#include <doctest/doctest.h>

#include "core/mesh_with.hh"

using namespace derp;

TEST_CASE("mesh-with: host, host:port and host/dialhost") {
    auto list = parse_mesh_with(" derp1.example.com, derp2.example.com:8443 ,derp3.example.com/10.0.0.3,,"
                                "127.0.0.2:3340,[::1]:3341,derp4.example.com:444/10.0.0.4");
    REQUIRE(list);
    REQUIRE(list->size() == 6);
    CHECK((*list)[0] == mesh_entry{"derp1.example.com", "derp1.example.com", "derp1.example.com", 443});
    CHECK((*list)[1] == mesh_entry{"derp2.example.com:8443", "derp2.example.com", "derp2.example.com", 8443});
    CHECK((*list)[2] == mesh_entry{"derp3.example.com", "derp3.example.com", "10.0.0.3", 443});
    CHECK((*list)[3] == mesh_entry{"127.0.0.2:3340", "127.0.0.2", "127.0.0.2", 3340});
    CHECK((*list)[4] == mesh_entry{"[::1]:3341", "::1", "::1", 3341});
    CHECK((*list)[5] == mesh_entry{"derp4.example.com:444", "derp4.example.com", "10.0.0.4", 444});
}

TEST_CASE("mesh-with: empty list and refusals") {
    auto empty = parse_mesh_with("");
    REQUIRE(empty);
    CHECK(empty->empty());
    for (const char* bad : {"host:0", "host:65536", "host:x", "::1", "[::1", "ho st", "a/b c", "h/", "x:1,x:1"}) {
        CAPTURE(bad);
        auto r = parse_mesh_with(bad);
        REQUIRE_FALSE(r);
        CHECK(r.error().find("-mesh-with") == 0);
    }
}
