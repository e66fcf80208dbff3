// The ACME files in -certdir (see acme_store.hh).
#include "server/acme_store.hh"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include <fmt/format.h>

namespace derp::server {

std::string acme_account_key_path(const std::string& certdir) { return certdir + "/acme_account+key"; }

std::string acme_certificate_path(const std::string& certdir, const std::string& hostname) {
    return certdir + "/" + hostname;
}

result<std::optional<std::string>, std::string> read_acme_file(const std::string& path, std::size_t bytes_max) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return std::optional<std::string>();
        return unexpected(fmt::format("{}: {}", path, std::strerror(errno)));
    }
    std::string text;
    char buffer[8192];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int error = errno;
            ::close(fd);
            return unexpected(fmt::format("{}: {}", path, std::strerror(error)));
        }
        if (n == 0) break;
        text.append(buffer, static_cast<std::size_t>(n));
        if (text.size() > bytes_max) {
            ::close(fd);
            return unexpected(fmt::format("{}: over {} bytes, not a file derpd wrote", path, bytes_max));
        }
    }
    ::close(fd);
    return std::optional<std::string>(std::move(text));
}

result<void, std::string> write_acme_file(const std::string& path, const std::string& contents) {
    std::random_device random;
    const std::string temporary = fmt::format("{}.tmp-{:08x}", path, random());
    // O_EXCL|O_NOFOLLOW: nothing already there (a planted symlink included) is written through.
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return unexpected(fmt::format("{}: {}", temporary, std::strerror(errno)));
    std::string_view rest = contents;
    while (!rest.empty()) {
        const ssize_t n = ::write(fd, rest.data(), rest.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int error = errno;
            ::close(fd);
            ::unlink(temporary.c_str());
            return unexpected(fmt::format("writing {}: {}", temporary, std::strerror(error)));
        }
        rest.remove_prefix(static_cast<std::size_t>(n));
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        ::unlink(temporary.c_str());
        return unexpected(fmt::format("writing {}: {}", temporary, std::strerror(errno)));
    }
    // rename replaces the name itself, never what a symlink there points to.
    if (::rename(temporary.c_str(), path.c_str()) != 0) {
        const int error = errno;
        ::unlink(temporary.c_str());
        return unexpected(fmt::format("renaming {} to {}: {}", temporary, path, std::strerror(error)));
    }
    return {};
}

result<account_key_load, std::string> load_or_create_account_key(const std::string& certdir) {
    const std::string path = acme_account_key_path(certdir);
    auto text = read_acme_file(path, 64 * 1024);
    if (!text) return unexpected(text.error());
    account_key_load out;
    if (text.value()) {
        auto key = tls::ec_key::from_pem(*text.value());
        if (!key) return unexpected(fmt::format("ACME account key {}: {}", path, key.error()));
        out.key = std::move(key.value());
        return out;
    }
    auto key = tls::ec_key::generate();
    if (!key) return unexpected(key.error());
    if (auto written = write_acme_file(path, key->to_pem()); !written) return unexpected(written.error());
    out.key = std::move(key.value());
    out.created = true;
    return out;
}

}  // namespace derp::server
