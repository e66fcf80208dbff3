// result<T, E>: a value or an error code, spelled like C++23 std::expected so that it can become an
// alias once the toolchain has it. core/ and ring/ never throw; operating errors travel as these.
#pragma once

#include <type_traits>
#include <utility>
#include <variant>

#include "core/assert.hh"

namespace derp {

template <typename E>
class unexpected {
public:
    constexpr explicit unexpected(E error) noexcept : _error(std::move(error)) {}
    constexpr const E& error() const noexcept { return _error; }

private:
    E _error;
};

template <typename T, typename E>
class [[nodiscard]] result {
public:
    constexpr result(T value) noexcept(std::is_nothrow_move_constructible_v<T>)
        : _storage(std::in_place_index<0>, std::move(value)) {}
    constexpr result(unexpected<E> error) noexcept
        : _storage(std::in_place_index<1>, error.error()) {}

    constexpr bool has_value() const noexcept { return _storage.index() == 0; }
    constexpr explicit operator bool() const noexcept { return has_value(); }

    constexpr T& value() & noexcept {
        DERP_ASSERT(has_value());
        return std::get<0>(_storage);
    }
    constexpr const T& value() const& noexcept {
        DERP_ASSERT(has_value());
        return std::get<0>(_storage);
    }
    constexpr T&& value() && noexcept {
        DERP_ASSERT(has_value());
        return std::get<0>(std::move(_storage));
    }
    constexpr const E& error() const noexcept {
        DERP_ASSERT(!has_value());
        return std::get<1>(_storage);
    }
    constexpr T* operator->() noexcept { return &value(); }
    constexpr const T* operator->() const noexcept { return &value(); }
    constexpr T& operator*() & noexcept { return value(); }
    constexpr const T& operator*() const& noexcept { return value(); }

private:
    std::variant<T, E> _storage;
};

// result<void, E>: success carries nothing.
template <typename E>
class [[nodiscard]] result<void, E> {
public:
    constexpr result() noexcept = default;
    constexpr result(unexpected<E> error) noexcept : _error(error.error()), _ok(false) {}

    constexpr bool has_value() const noexcept { return _ok; }
    constexpr explicit operator bool() const noexcept { return _ok; }
    constexpr const E& error() const noexcept {
        DERP_ASSERT(!_ok);
        return _error;
    }

private:
    E _error{};
    bool _ok = true;
};

}  // namespace derp
