// The certificate directory of -certmode manual, on a real file system: derper's default
// directory made from nothing (a fresh HOME), and the self-signed key written only where it
// belongs (never through a planted symlink, never into a directory others can write).
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "crypto/box.hh"
#include "server/certificates.hh"
#include "server/files.hh"

using namespace derp;

namespace {

struct temp_dir {
    std::filesystem::path path;
    temp_dir() {
        char pattern[] = "/tmp/derpd-certdir-unit-XXXXXX";
        REQUIRE(mkdtemp(pattern) != nullptr);
        path = pattern;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

mode_t mode_of(const std::filesystem::path& p) {
    struct stat st{};
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

node_key server_key() { return public_key_of(generate_private_key()); }

}  // namespace

TEST_CASE("certdir: derper's default directory is made from an empty HOME, with its parents") {
    REQUIRE(crypto_init());
    temp_dir home;
    const char* old_home = std::getenv("HOME");
    const std::string saved_home = old_home != nullptr ? old_home : "";
    const char* old_xdg = std::getenv("XDG_CACHE_HOME");
    const std::string saved_xdg = old_xdg != nullptr ? old_xdg : "";
    ::setenv("HOME", home.path.c_str(), 1);
    ::unsetenv("XDG_CACHE_HOME");
    const std::string certdir = server::default_certdir();
    CHECK(certdir == (home.path / ".cache/tailscale/derper-certs").string());
    auto setup = server::load_manual_certificate(certdir, "127.0.0.1", server_key());
    CHECK_MESSAGE(setup, (setup ? "" : setup.error()));
    if (setup) {
        CHECK(setup->self_signed_written);
        CHECK(mode_of(certdir) == 0700);
        CHECK(mode_of(home.path / ".cache/tailscale") == 0700);
        CHECK(mode_of(certdir + "/127.0.0.1.key") == 0600);
        CHECK(mode_of(certdir + "/127.0.0.1.crt") == 0644);
    }
    if (old_home != nullptr) ::setenv("HOME", saved_home.c_str(), 1);
    if (old_xdg != nullptr) ::setenv("XDG_CACHE_HOME", saved_xdg.c_str(), 1);
}

TEST_CASE("certdir: a planted dangling .key symlink never receives the private key") {
    REQUIRE(crypto_init());
    temp_dir t;
    const auto certdir = t.path / "certs";
    REQUIRE(::mkdir(certdir.c_str(), 0700) == 0);
    // Where someone who could write the directory earlier wants the key to go.
    const auto stolen = t.path / "elsewhere.key";
    std::filesystem::create_symlink(stolen, certdir / "127.0.0.1.key");
    auto setup = server::load_manual_certificate(certdir.string(), "127.0.0.1", server_key());
    CHECK(!setup);
    CHECK(!std::filesystem::exists(stolen));
    CHECK(!std::filesystem::exists(certdir / "127.0.0.1.crt"));

    // The same for the certificate link alone: the key is not written either.
    std::filesystem::remove(certdir / "127.0.0.1.key");
    std::filesystem::create_symlink(t.path / "elsewhere.crt", certdir / "127.0.0.1.crt");
    CHECK(!server::load_manual_certificate(certdir.string(), "127.0.0.1", server_key()));
    CHECK(!std::filesystem::exists(certdir / "127.0.0.1.key"));
    CHECK(!std::filesystem::exists(t.path / "elsewhere.crt"));
}

TEST_CASE("certdir: a directory others can write is refused before a key is written into it") {
    REQUIRE(crypto_init());
    temp_dir t;
    for (mode_t mode : {mode_t{0770}, mode_t{0757}, mode_t{01777}}) {
        CAPTURE(mode);
        const auto certdir = t.path / ("certs" + std::to_string(mode));
        REQUIRE(::mkdir(certdir.c_str(), 0700) == 0);
        REQUIRE(::chmod(certdir.c_str(), mode) == 0);
        auto setup = server::load_manual_certificate(certdir.string(), "127.0.0.1", server_key());
        REQUIRE(!setup);
        CHECK(setup.error().find("writable by") != std::string::npos);
        CHECK(!std::filesystem::exists(certdir / "127.0.0.1.key"));
    }
    // 0755 (or 0700) of our own is fine, and a second start reads what the first wrote.
    const auto certdir = t.path / "ok";
    REQUIRE(::mkdir(certdir.c_str(), 0755) == 0);
    REQUIRE(::chmod(certdir.c_str(), 0755) == 0);
    auto first = server::load_manual_certificate(certdir.string(), "127.0.0.1", server_key());
    REQUIRE_MESSAGE(first, (first ? "" : first.error()));
    auto second = server::load_manual_certificate(certdir.string(), "127.0.0.1", server_key());
    REQUIRE_MESSAGE(second, (second ? "" : second.error()));
    CHECK(!second->self_signed_written);
    CHECK(first->context->leaf_sha256() == second->context->leaf_sha256());
}

TEST_CASE("certdir: make_private_directory creates parents and refuses what is not a directory") {
    temp_dir t;
    CHECK(server::make_private_directory((t.path / "a/b/c").string()));
    CHECK(mode_of(t.path / "a") == 0700);
    CHECK(server::make_private_directory((t.path / "a//b/c/").string()));  // again, odd spelling
    REQUIRE(std::filesystem::exists(t.path / "a/b/c"));
    { std::FILE* f = std::fopen((t.path / "file").c_str(), "w"); REQUIRE(f != nullptr); std::fclose(f); }
    CHECK(!server::make_private_directory((t.path / "file").string()));
    CHECK(!server::make_private_directory((t.path / "file/sub").string()));
    CHECK(!server::make_private_directory(""));
}
