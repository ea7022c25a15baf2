#pragma once
// NumPy .npy files (format versions 1.0, 2.0 and 3.0), C order, little-endian.
//
//   Tensor<int64_t> tokens = io::read_npy<int64_t>("tokens.npy");    // int8/16/32/64, uint8/16/32 -> integer T
//   Tensor<float> logits  = io::read_npy<float>("logits.npy");        // float16/32/64 -> floating T
//   io::write_npy("out.npy", logits.cview());                         // float32, float64, int64, int32 (atomic)
//
// Everything is validated (magic, version, header syntax, dtype, order, shape, exact data size); problems are a
// retnet::Error naming the file and the problem.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/core/tensor.hpp"
#include "retnet/io/safetensors.hpp"  // half-precision conversions, write_all

namespace retnet::io {

namespace detail {

struct NpyHeader {
  std::string descr;  // e.g. "<f4"
  bool fortran_order = false;
  std::vector<int64_t> shape;
  size_t data_offset = 0;
};

// Parses the Python dict literal of a .npy header: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
inline NpyHeader parse_npy_dict(const std::string& s, const std::string& path) {
  NpyHeader h;
  size_t i = 0;
  auto bad = [&](const std::string& what) -> void { fail(path, ": malformed .npy header (", what, "): ", s); };
  auto ws = [&] {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  };
  auto eat = [&](char c) {
    ws();
    if (i >= s.size() || s[i] != c) bad(std::string("expected '") + c + "'");
    ++i;
  };
  auto str = [&]() {
    ws();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) bad("expected a string");
    const char q = s[i++];
    const size_t e = s.find(q, i);
    if (e == std::string::npos) bad("unterminated string");
    std::string r = s.substr(i, e - i);
    i = e + 1;
    return r;
  };
  bool seen_descr = false, seen_order = false, seen_shape = false;
  eat('{');
  for (;;) {
    ws();
    if (i < s.size() && s[i] == '}') {
      ++i;
      break;
    }
    const std::string key = str();
    eat(':');
    ws();
    if (key == "descr") {
      h.descr = str();
      seen_descr = true;
    } else if (key == "fortran_order") {
      if (s.compare(i, 4, "True") == 0) {
        h.fortran_order = true;
        i += 4;
      } else if (s.compare(i, 5, "False") == 0) {
        i += 5;
      } else {
        bad("fortran_order must be True or False");
      }
      seen_order = true;
    } else if (key == "shape") {
      eat('(');
      for (;;) {
        ws();
        if (i < s.size() && s[i] == ')') {
          ++i;
          break;
        }
        if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) bad("shape entries must be integers");
        int64_t v = 0;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
          if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) bad("shape entry too large");
          v = v * 10 + (s[i++] - '0');
        }
        if (i < s.size() && s[i] == 'L') ++i;  // Python 2 longs
        h.shape.push_back(v);
        ws();
        if (i < s.size() && s[i] == ',') ++i;
      }
      seen_shape = true;
    } else {
      bad("unknown key '" + key + "'");
    }
    ws();
    if (i < s.size() && s[i] == ',') ++i;
  }
  ws();
  if (i != s.size()) bad("trailing characters");
  if (!seen_descr || !seen_order || !seen_shape) bad("descr, fortran_order and shape are required");
  return h;
}

inline std::string npy_descr_normalised(const std::string& d, const std::string& path) {
  // '<' little-endian, '|' not applicable, '=' native (little here); '>' big-endian is rejected.
  require(d.size() >= 2, path, ": unsupported .npy dtype '", d, "'");
  require(d[0] != '>', path, ": big-endian .npy dtype '", d, "' is not supported");
  return d.substr(d[0] == '<' || d[0] == '|' || d[0] == '=' ? 1 : 0);
}

template <class T>
constexpr const char* npy_descr() {
  if constexpr (std::is_same_v<T, float>) return "<f4";
  if constexpr (std::is_same_v<T, double>) return "<f8";
  if constexpr (std::is_same_v<T, int64_t>) return "<i8";
  if constexpr (std::is_same_v<T, int32_t>) return "<i4";
  return nullptr;
}

}  // namespace detail

namespace detail {

// Where the data of a .npy file lies and what it holds, from its first bytes (`head`, at least the whole
// header) and the file's total size, which must match the header exactly.
struct NpyLayout {
  NpyHeader header;
  std::string dtype;  // normalised, e.g. "f4"
  int64_t esize = 0, numel = 0;
  size_t data_start = 0;
};

inline constexpr size_t kNpyMaxHeader = size_t{1} << 20;  // numpy writes a few hundred bytes

inline NpyLayout npy_layout(const std::string& head, int64_t total, const std::string& path) {
  NpyLayout l;
  require(head.size() >= 10 && head.compare(0, 6, "\x93NUMPY") == 0, path, ": not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(head[6]);
  require(major >= 1 && major <= 3, path, ": unsupported .npy format version ", major);
  size_t hlen = 0, hstart = 0;
  if (major == 1) {
    hlen = static_cast<unsigned char>(head[8]) | (static_cast<size_t>(static_cast<unsigned char>(head[9])) << 8);
    hstart = 10;
  } else {
    require(head.size() >= 12, path, ": truncated .npy header");
    uint32_t n;
    std::memcpy(&n, head.data() + 8, 4);
    hlen = n;
    hstart = 12;
  }
  require(hlen <= kNpyMaxHeader, path, ": .npy header length ", hlen, " is implausible (at most ", kNpyMaxHeader,
          " bytes)");
  require(hlen <= head.size() - hstart, path, ": truncated .npy header (", hlen, " bytes claimed)");
  l.header = parse_npy_dict(head.substr(hstart, hlen), path);
  const NpyHeader& h = l.header;
  require(!h.fortran_order, path, ": Fortran-order arrays are not supported; save with C order");
  require(h.shape.size() <= static_cast<size_t>(Shape::max_rank), path, ": rank ", h.shape.size(),
          " exceeds the supported maximum ", Shape::max_rank);
  int64_t numel = 1;
  for (int64_t d : h.shape) {
    require(d == 0 || numel <= (int64_t{1} << 48) / d, path, ": array too large");
    numel *= d;
  }
  l.numel = numel;
  l.dtype = npy_descr_normalised(h.descr, path);
  const std::string& dt = l.dtype;
  if (dt == "f8" || dt == "i8" || dt == "u8")
    l.esize = 8;
  else if (dt == "f4" || dt == "i4" || dt == "u4")
    l.esize = 4;
  else if (dt == "f2" || dt == "i2" || dt == "u2")
    l.esize = 2;
  else if (dt == "i1" || dt == "u1" || dt == "b1")
    l.esize = 1;
  else
    fail(path, ": unsupported .npy dtype '", h.descr, "'");
  l.data_start = hstart + hlen;
  const int64_t have = total - static_cast<int64_t>(l.data_start), need = numel * l.esize;
  require(have == need, path, ": data has ", have, " bytes, but dtype ", h.descr, " and shape ",
          Shape(h.shape).to_string(), " need ", need, have < need ? " (truncated)" : "");
  return l;
}

// Converts the data (exactly l.numel * l.esize bytes at b) to a Tensor<T>.
template <class T>
Tensor<T> npy_decode(const NpyLayout& l, const char* b, const std::string& path) {
  const std::string& dt = l.dtype;
  const int64_t numel = l.numel;
  Tensor<T> out(Shape(l.header.shape));
  auto convert = [&](auto tag) {
    using S = decltype(tag);
    for (int64_t i = 0; i < numel; ++i) {
      S s;
      std::memcpy(&s, b + i * static_cast<int64_t>(sizeof(S)), sizeof(S));
      if constexpr (std::is_integral_v<T>) {
        require(std::in_range<T>(s), path, ": element ", i, " = ", +s, " does not fit the requested integer type");
      }
      out[i] = static_cast<T>(s);
    }
  };
  const bool is_float = dt[0] == 'f';
  if constexpr (std::is_floating_point_v<T>) {
    require(is_float, path, ": dtype '", l.header.descr,
            "' is not floating point; expected float16, float32 or float64");
    if (dt == "f8") {
      convert(double{});
    } else if (dt == "f4") {
      convert(float{});
    } else {
      for (int64_t i = 0; i < numel; ++i) {
        uint16_t x;
        std::memcpy(&x, b + 2 * i, 2);
        out[i] = static_cast<T>(f16_to_float(x));
      }
    }
  } else {
    require(!is_float, path, ": dtype '", l.header.descr, "' is floating point; expected an integer array");
    if (dt == "i8")
      convert(int64_t{});
    else if (dt == "i4")
      convert(int32_t{});
    else if (dt == "i2")
      convert(int16_t{});
    else if (dt == "i1")
      convert(int8_t{});
    else if (dt == "u8")
      convert(uint64_t{});
    else if (dt == "u4")
      convert(uint32_t{});
    else if (dt == "u2")
      convert(uint16_t{});
    else
      convert(uint8_t{});
  }
  return out;
}

}  // namespace detail

// Decodes the complete contents of a .npy file held in memory (`path` names it in messages).
template <class T>
Tensor<T> read_npy_bytes(const std::string& raw, const std::string& path = "<memory>") {
  static_assert(std::is_arithmetic_v<T>, "read_npy: T must be arithmetic");
  const detail::NpyLayout l = detail::npy_layout(raw, static_cast<int64_t>(raw.size()), path);
  return detail::npy_decode<T>(l, raw.data() + l.data_start, path);
}

// Reads a .npy file into a Tensor<T> (rank <= 6), converting the element type (floating <-> floating,
// integer <-> integer with a range check). The file must be a regular file whose size matches its header,
// which is checked before the data is read.
template <class T>
Tensor<T> read_npy(const std::string& path) {
  static_assert(std::is_arithmetic_v<T>, "read_npy: T must be arithmetic");
  int64_t size = 0;
  const int fd = detail::open_regular_file(path, "a .npy file", size);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  std::string head(static_cast<size_t>(std::min<int64_t>(size, 12 + static_cast<int64_t>(detail::kNpyMaxHeader))),
                   '\0');
  require(detail::pread_all(fd, head.data(), head.size(), 0), path, ": cannot read the .npy header");
  const detail::NpyLayout l = detail::npy_layout(head, size, path);
  std::string data(static_cast<size_t>(l.numel * l.esize), '\0');
  require(detail::pread_all(fd, data.data(), data.size(), static_cast<int64_t>(l.data_start)), path,
          ": cannot read the .npy data (the file shrank while reading)");
  return detail::npy_decode<T>(l, data.data(), path);
}

// The bytes of a version-1.0 .npy file holding `v`.
template <class T>
std::string npy_bytes(HostView<const T> v) {
  constexpr const char* descr = detail::npy_descr<T>();
  static_assert(descr != nullptr, "write_npy: supported element types are float, double, int64_t, int32_t");
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < v.rank(); ++i) {
    if (i) dict += ", ";
    dict += std::to_string(v.size(i));
  }
  if (v.rank() == 1) dict += ',';
  dict += "), }";
  size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  require(dict.size() <= 65535, "write_npy: header too long");
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(dict.size() & 0xFF);
  out += static_cast<char>(dict.size() >> 8);
  out += dict;
  out.append(reinterpret_cast<const char*>(v.data()), static_cast<size_t>(v.numel()) * sizeof(T));
  return out;
}

// Writes `v` as .npy, atomically (temporary file in the same directory, fsync, rename).
template <class T>
void write_npy(const std::string& path, HostView<const T> v) {
  require(!v.empty() || v.numel() == 0, "write_npy: ", path, ": null data");
  const std::string bytes = npy_bytes(v);
  std::string tmpl = path + ".tmp.XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  const int fd = ::mkstemp(name.data());
  require(fd >= 0, path, ": cannot create a temporary file: ", detail::errno_text());
  const std::string tmp(name.data());
  try {
    detail::write_all(fd, bytes.data(), bytes.size(), tmp);
    ::fsync(fd);
    ::fchmod(fd, 0644);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string e = detail::errno_text();
    ::unlink(tmp.c_str());
    fail(path, ": cannot rename the temporary file into place: ", e);
  }
}

template <class T>
void write_npy(const std::string& path, const Tensor<T>& t) {
  write_npy(path, t.cview());
}

}  // namespace retnet::io
