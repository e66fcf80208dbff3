// Key file and mesh PSK file handling (see files.hh).
#include "server/files.hh"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "crypto/box.hh"

namespace derp::server {
namespace {

result<std::string, int> read_small_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return unexpected(errno);
    std::string contents;
    char buffer[4096];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0) {
            const int err = errno;
            ::close(fd);
            return unexpected(err);
        }
        if (n == 0) break;
        contents.append(buffer, static_cast<std::size_t>(n));
        if (contents.size() > (1u << 20)) {  // no key file is this large
            ::close(fd);
            return unexpected(EFBIG);
        }
    }
    ::close(fd);
    return contents;
}

std::string_view key_file_error_text(key_file_error e) {
    switch (e) {
    case key_file_error::bad_json: return "not a JSON object";
    case key_file_error::bad_private_key: return "PrivateKey is not \"privkey:\" followed by 64 hex digits";
    case key_file_error::missing_key: return "no PrivateKey in it";
    }
    return "malformed";
}

}  // namespace

result<loaded_key, std::string> load_or_create_key_file(const std::string& path) {
    auto contents = read_small_file(path);
    if (contents) {
        auto key = parse_key_file(contents.value());
        if (!key)
            return unexpected(fmt::format("config file {}: {} (derpd never overwrites it; fix or "
                                          "remove it to generate a new key)",
                                          path, key_file_error_text(key.error())));
        return loaded_key{key.value(), false};
    }
    if (contents.error() != ENOENT)
        return unexpected(fmt::format("config file {}: {}", path, std::strerror(contents.error())));

    // Not there: create it, as derper does, with parent directories.
    const std::filesystem::path file(path);
    std::error_code ec;
    if (file.has_parent_path()) {
        std::filesystem::create_directories(file.parent_path(), ec);
        if (ec)
            return unexpected(fmt::format("config file {}: cannot create directory {}: {}", path,
                                          file.parent_path().string(), ec.message()));
    }
    const private_key key = generate_private_key();
    const std::string text = format_key_file(key);
    const std::string temporary = path + ".tmp";
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return unexpected(fmt::format("config file {}: cannot create {}: {}", path, temporary,
                                      std::strerror(errno)));
    const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                         ::fsync(fd) == 0;
    const int write_errno = errno;
    ::close(fd);
    if (!written) {
        ::unlink(temporary.c_str());
        return unexpected(fmt::format("config file {}: writing {}: {}", path, temporary,
                                      std::strerror(write_errno)));
    }
    // link+unlink instead of rename: a file that appeared meanwhile is never replaced.
    if (::link(temporary.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(temporary.c_str());
        return unexpected(fmt::format("config file {}: {}", path, std::strerror(err)));
    }
    ::unlink(temporary.c_str());
    return loaded_key{key, true};
}

result<key_mesh, std::string> load_mesh_key_file(const std::string& path) {
    auto contents = read_small_file(path);
    if (!contents)
        return unexpected(fmt::format("mesh key file {}: {}", path, std::strerror(contents.error())));
    auto key = key_mesh::from_psk_file(contents.value());
    if (!key) return unexpected(fmt::format("mesh key file {}: invalid mesh key (want 64 hex digits)", path));
    return *key;
}

result<rate_config, std::string> load_rate_config_file(const std::string& path) {
    auto contents = read_small_file(path);
    if (!contents) return unexpected(fmt::format("rate config {}: {}", path, std::strerror(contents.error())));
    auto parsed = parse_rate_config(contents.value());
    if (!parsed) return unexpected(fmt::format("rate config {}: {}", path, parsed.error()));
    return *parsed;
}

result<void, std::string> make_private_directory(const std::string& path) {
    if (path.empty()) return unexpected(std::string("directory: empty path"));
    // Each prefix that ends before a slash, then the whole path; EEXIST is whatever is there
    // already, judged below (for the last component) or by the next mkdir (ENOTDIR).
    for (std::size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
        const std::string prefix = path.substr(0, slash);
        if (!prefix.empty() && prefix.back() != '/' && ::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST)
            return unexpected(fmt::format("directory {}: cannot create {}: {}", path, prefix, std::strerror(errno)));
        if (slash == std::string::npos) break;
    }
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) return unexpected(fmt::format("directory {}: {}", path, std::strerror(errno)));
    if (!S_ISDIR(st.st_mode)) return unexpected(fmt::format("directory {}: not a directory", path));
    const uid_t me = ::geteuid();
    if (st.st_uid != me && st.st_uid != 0)
        return unexpected(fmt::format("directory {} belongs to uid {}, not to derpd's user (uid {}) or root: its owner "
                                      "could replace the files derpd writes there",
                                      path, st.st_uid, me));
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
        return unexpected(fmt::format("directory {} is writable by {} (mode {:04o}): anyone who can write there could "
                                      "plant a symlink where derpd writes its private key; chmod go-w {}",
                                      path, (st.st_mode & S_IWOTH) != 0 ? "others" : "its group", st.st_mode & 07777, path));
    return {};
}

std::string default_mesh_psk_path() {
    std::error_code ec;
    if (std::filesystem::exists("/home/derp/keys/derp-mesh.key", ec))
        return "/home/derp/keys/derp-mesh.key";
    if (const char* home = std::getenv("HOME")) {
        const std::string candidate = std::string(home) + "/keys/derp-mesh.key";
        if (std::filesystem::exists(candidate, ec)) return candidate;
    }
    return {};
}

}  // namespace derp::server
