#pragma once
// safetensors (https://github.com/huggingface/safetensors) reading and writing, with no dependency beyond
// the standard library and POSIX (the small JSON header is parsed here, so this header does not need
// nlohmann_json).
//
// File layout: 8 bytes little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ..., "__metadata__": {"k": "v"}}
// then the byte buffer; offsets are relative to the start of the buffer.
//
// Writing: SafetensorsWriter collects tensors (float -> F32, double -> F64, int64_t -> I64, int32_t -> I32, or
// F16/BF16 on request) and writes atomically: a temporary file in the same directory, fsync, rename, fsync
// of the directory. A crash leaves either the old file or the new one.
//
// Reading: SafetensorsFile::open validates the whole header before anything is read: header length,
// JSON syntax, duplicate names, dtypes, shapes, offsets inside the file, not overlapping and matching
// dtype size x element count. Every problem is a retnet::Error naming the file and the problem.
// The file must be a regular file; it stays open and every tensor is read through that one descriptor, so a
// reader never mixes the header of one file with the data of its replacement. Tensor data is read on demand
// (the file is not loaded whole), converted from F64/F32/F16/BF16 to float or double (or from integer dtypes
// to integer types). A file whose metadata holds per-tensor checksums (kChecksumKey) has each tensor's bytes
// verified when read.
//
// Parameter tables (load_params/save_params) and prefixes: several tables may share one file (a training
// checkpoint holds the model and the optimizer moments). Each table is stored under a prefix; parameter
// names never contain '/', so prefixes of extra groups end in '/', e.g. "adam.m/" and "adam.v/". A table
// loaded with prefix P owns every name that starts with P and has no '/' after P. load_params is strict
// about that scope: every table name must be present with the right shape, and no other name may be in
// scope. A model file (prefix "") must therefore hold exactly the table's names, besides names of other
// groups ("group/..."), which it ignores.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "retnet/core/error.hpp"
#include "retnet/core/params.hpp"
#include "retnet/core/tensor.hpp"

static_assert(std::endian::native == std::endian::little, "retnet/io/safetensors.hpp assumes a little-endian host");

namespace retnet::io {

namespace detail {

// ---- a small, strict JSON reader for safetensors headers -------------------------------------------------
// Object fields are a named struct rather than std::pair: libstdc++'s pair asks whether JsonValue is default
// constructible while JsonValue is still incomplete, which clang rejects.
struct JsonField;
struct JsonValue {
  enum Kind { null, boolean, number, string, array, object } kind = null;
  bool b = false;
  std::string text;               // string contents, or the number's literal text
  std::vector<JsonValue> items;   // array
  std::vector<JsonField> fields;  // object, in file order
};
struct JsonField {
  std::string key;
  JsonValue value;
};

class JsonParser {
 public:
  JsonParser(const char* data, size_t size, std::string where)
      : p_(data), end_(data + size), where_(std::move(where)) {}

  JsonValue parse_document() {
    JsonValue v = parse_value(0);
    skip_ws();
    if (p_ != end_) error("unexpected characters after the JSON value");
    return v;
  }

 private:
  const char* p_;
  const char* end_;
  std::string where_;
  const char* begin_ = p_;

  [[noreturn]] void error(const std::string& what) const {
    fail(where_, ": invalid JSON header at byte ", p_ - begin_, ": ", what);
  }
  void skip_ws() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  void expect(char c) {
    skip_ws();
    if (p_ == end_ || *p_ != c) error(std::string("expected '") + c + "'");
    ++p_;
  }
  bool literal(const char* word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) >= n && std::memcmp(p_, word, n) == 0) {
      p_ += n;
      return true;
    }
    return false;
  }

  JsonValue parse_value(int depth) {
    if (depth > 64) error("nesting deeper than 64 levels");
    skip_ws();
    if (p_ == end_) error("unexpected end of the header");
    JsonValue v;
    const char c = *p_;
    if (c == '{') {
      ++p_;
      v.kind = JsonValue::object;
      skip_ws();
      if (p_ != end_ && *p_ == '}') {
        ++p_;
        return v;
      }
      for (;;) {
        skip_ws();
        if (p_ == end_ || *p_ != '"') error("expected a string key");
        std::string key = parse_string();
        expect(':');
        JsonValue item = parse_value(depth + 1);
        v.fields.push_back(JsonField{std::move(key), std::move(item)});
        skip_ws();
        if (p_ != end_ && *p_ == ',') {
          ++p_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      ++p_;
      v.kind = JsonValue::array;
      skip_ws();
      if (p_ != end_ && *p_ == ']') {
        ++p_;
        return v;
      }
      for (;;) {
        v.items.push_back(parse_value(depth + 1));
        skip_ws();
        if (p_ != end_ && *p_ == ',') {
          ++p_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = JsonValue::string;
      v.text = parse_string();
      return v;
    }
    if (literal("true")) {
      v.kind = JsonValue::boolean;
      v.b = true;
      return v;
    }
    if (literal("false")) {
      v.kind = JsonValue::boolean;
      return v;
    }
    if (literal("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) {
      const char* s = p_;
      if (*p_ == '-') ++p_;
      auto digits = [&] {
        const char* d = p_;
        while (p_ != end_ && *p_ >= '0' && *p_ <= '9') ++p_;
        if (p_ == d) error("malformed number");
      };
      digits();
      if (p_ != end_ && *p_ == '.') {
        ++p_;
        digits();
      }
      if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
        ++p_;
        if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
        digits();
      }
      v.kind = JsonValue::number;
      v.text.assign(s, p_);
      return v;
    }
    error(std::string("unexpected character '") + (c >= 32 && c < 127 ? std::string(1, c) : std::string("?")) + "'");
  }

  unsigned hex4() {
    if (end_ - p_ < 4) error("truncated \\u escape");
    unsigned u = 0;
    for (int i = 0; i < 4; ++i, ++p_) {
      const char h = *p_;
      u <<= 4;
      if (h >= '0' && h <= '9')
        u |= static_cast<unsigned>(h - '0');
      else if (h >= 'a' && h <= 'f')
        u |= static_cast<unsigned>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F')
        u |= static_cast<unsigned>(h - 'A' + 10);
      else
        error("bad hex digit in \\u escape");
    }
    return u;
  }

  std::string parse_string() {
    ++p_;  // opening quote
    std::string s;
    for (;;) {
      if (p_ == end_) error("unterminated string");
      const char c = *p_++;
      if (c == '"') return s;
      if (static_cast<unsigned char>(c) < 0x20) error("control character inside a string");
      if (c != '\\') {
        s += c;
        continue;
      }
      if (p_ == end_) error("unterminated escape");
      const char e = *p_++;
      switch (e) {
        case '"':
        case '\\':
        case '/':
          s += e;
          break;
        case 'b':
          s += '\b';
          break;
        case 'f':
          s += '\f';
          break;
        case 'n':
          s += '\n';
          break;
        case 'r':
          s += '\r';
          break;
        case 't':
          s += '\t';
          break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') error("unpaired surrogate in \\u escape");
            p_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) error("bad low surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            error("unpaired surrogate in \\u escape");
          }
          if (cp < 0x80) {
            s += static_cast<char>(cp);
          } else if (cp < 0x800) {
            s += static_cast<char>(0xC0 | (cp >> 6));
            s += static_cast<char>(0x80 | (cp & 0x3F));
          } else if (cp < 0x10000) {
            s += static_cast<char>(0xE0 | (cp >> 12));
            s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            s += static_cast<char>(0x80 | (cp & 0x3F));
          } else {
            s += static_cast<char>(0xF0 | (cp >> 18));
            s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            s += static_cast<char>(0x80 | (cp & 0x3F));
          }
          break;
        }
        default:
          error("unknown escape");
      }
    }
  }
};

inline std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      static const char* hex = "0123456789abcdef";
      out += "\\u00";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// A non-negative integer that fits int64, from a JSON number's literal text; false otherwise.
inline bool json_to_index(const JsonValue& v, int64_t& out) {
  if (v.kind != JsonValue::number || v.text.empty() || v.text[0] == '-') return false;
  int64_t r = 0;
  for (const char c : v.text) {
    if (c < '0' || c > '9') return false;  // fractions and exponents are not indices
    if (r > (std::numeric_limits<int64_t>::max() - (c - '0')) / 10) return false;
    r = r * 10 + (c - '0');
  }
  out = r;
  return true;
}

// ---- half-precision conversions --------------------------------------------------------------------------
inline float bf16_to_float(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  float v;
  if (exp == 0)
    v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31)
    v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else
    v = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

inline uint16_t float_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7E00u);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to infinity
  if (a < std::ldexp(1.0f, -14)) {                                  // subnormal (or zero)
    const float m = std::nearbyint(a * std::ldexp(1.0f, 24));       // units of 2^-24, ties to even
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(m));
  }
  int e;
  const float fr = std::frexp(a, &e);                      // a = fr * 2^e, fr in [0.5, 1)
  float m = std::nearbyint((fr * 2.0f - 1.0f) * 1024.0f);  // 10-bit mantissa
  int exp = e - 1 + 15;
  if (m >= 1024.0f) {
    m = 0;
    ++exp;
  }
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7C00u);
  return static_cast<uint16_t>(sign | (exp << 10) | static_cast<uint16_t>(m));
}

inline int64_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;  // unknown
}

template <class T>
constexpr const char* native_dtype() {
  if constexpr (std::is_same_v<T, float>) return "F32";
  if constexpr (std::is_same_v<T, double>) return "F64";
  if constexpr (std::is_same_v<T, int64_t>) return "I64";
  if constexpr (std::is_same_v<T, int32_t>) return "I32";
  if constexpr (std::is_same_v<T, uint8_t>) return "U8";
  return nullptr;
}

inline std::string errno_text() { return std::strerror(errno); }

// FNV-1a (64 bit) of a byte range: the per-tensor integrity checksum (see SafetensorsWriter::set_checksums).
inline uint64_t fnv1a64(const char* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 0x100000001b3ULL;
  }
  return h;
}
inline std::string hex64(uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<size_t>(i)] = digits[v & 15];
  return s;
}

// Opens `path` read-only and checks that it is a regular file (not a directory, device or pipe, whose size
// is meaningless or endless); returns the descriptor and its size. `what` names the expected kind of file.
inline int open_regular_file(const std::string& path, const char* what, int64_t& size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  require(fd >= 0, path, ": cannot open ", what, ": ", errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string e = errno_text();
    ::close(fd);
    fail(path, ": cannot stat ", what, ": ", e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": is ", S_ISDIR(st.st_mode) ? "a directory" : "not a regular file", ", expected ", what);
  }
  size = static_cast<int64_t>(st.st_size);
  return fd;
}

// Reads exactly n bytes at `offset`; false when the file ends first (it shrank) or the read fails.
inline bool pread_all(int fd, char* out, size_t n, int64_t offset) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, out, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    out += r;
    n -= static_cast<size_t>(r);
    offset += r;
  }
  return true;
}

// The bytes behind a SafetensorsFile: one open descriptor (every read goes through it, so a file replaced by
// rename while it is being read keeps serving the old contents) or a buffer in memory.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual int64_t size() const = 0;
  virtual bool read(int64_t offset, char* out, size_t n) const = 0;
};

class FileSource final : public ByteSource {
 public:
  explicit FileSource(const std::string& path) { fd_ = open_regular_file(path, "a safetensors file", size_); }
  ~FileSource() override { ::close(fd_); }
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  int64_t size() const override { return size_; }
  bool read(int64_t offset, char* out, size_t n) const override { return pread_all(fd_, out, n, offset); }

 private:
  int fd_ = -1;
  int64_t size_ = 0;
};

class MemorySource final : public ByteSource {
 public:
  explicit MemorySource(std::string bytes) : bytes_(std::move(bytes)) {}
  int64_t size() const override { return static_cast<int64_t>(bytes_.size()); }
  bool read(int64_t offset, char* out, size_t n) const override {
    if (offset < 0 || offset > size() || n > static_cast<size_t>(size() - offset)) return false;
    if (n) std::memcpy(out, bytes_.data() + offset, n);
    return true;
  }

 private:
  std::string bytes_;
};

inline void write_all(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(path, ": write failed: ", errno_text());
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace detail

// Metadata key of the per-tensor checksums (SafetensorsWriter::set_checksums).
inline constexpr const char* kChecksumKey = "retnet.fnv1a64";

// ---- writing --------------------------------------------------------------------------------------------
class SafetensorsWriter {
 public:
  // Stores a copy of numel(shape) values; dtype from T (float F32, double F64, int64_t I64, int32_t I32, uint8_t U8).
  template <class T>
  void add(std::string name, Shape shape, const T* data) {
    constexpr const char* dt = detail::native_dtype<T>();
    static_assert(dt != nullptr, "SafetensorsWriter::add: unsupported element type");
    const int64_t n = checked_numel(name, shape);
    require(data != nullptr || n == 0, "SafetensorsWriter: tensor '", name, "' has null data");
    std::string bytes(static_cast<size_t>(n) * sizeof(T), '\0');
    if (n) std::memcpy(bytes.data(), data, bytes.size());
    insert(std::move(name), dt, shape, std::move(bytes));
  }

  // Stores float or double values converted to dtype "F32", "F64", "F16" or "BF16" (round to nearest even).
  template <class T>
  void add(std::string name, Shape shape, const T* data, const std::string& dtype) {
    static_assert(std::is_floating_point_v<T>, "SafetensorsWriter::add with a dtype takes float or double data");
    const int64_t n = checked_numel(name, shape);
    require(data != nullptr || n == 0, "SafetensorsWriter: tensor '", name, "' has null data");
    std::string bytes;
    if (dtype == "F32") {
      std::vector<float> v(data, data + n);
      bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
    } else if (dtype == "F64") {
      std::vector<double> v(data, data + n);
      bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(double));
    } else if (dtype == "F16" || dtype == "BF16") {
      std::vector<uint16_t> v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        v[static_cast<size_t>(i)] = dtype == "F16" ? detail::float_to_f16(static_cast<float>(data[i]))
                                                   : detail::float_to_bf16(static_cast<float>(data[i]));
      bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(uint16_t));
    } else {
      fail("SafetensorsWriter: tensor '", name, "': dtype '", dtype, "' is not one of F32, F64, F16, BF16");
    }
    insert(std::move(name), dtype, shape, std::move(bytes));
  }

  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

  // Stores an FNV-1a checksum of every tensor's bytes in the metadata (key kChecksumKey, a JSON object
  // name -> 16 hex digits); SafetensorsFile::read then verifies each tensor it reads, so a flipped byte in
  // the data is an error instead of a silently different value. Other readers ignore the key.
  void set_checksums(bool on) { checksums_ = on; }

  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  size_t size() const { return tensors_.size(); }

  // The complete file contents (header and data).
  std::string serialize() const {
    std::string header = "{";
    bool first = true;
    std::map<std::string, std::string> metadata = metadata_;
    if (checksums_) {
      std::string sums = "{";
      for (const auto& t : tensors_)
        sums += (sums.size() > 1 ? "," : "") + detail::json_quote(t.name) + ":\"" +
                detail::hex64(detail::fnv1a64(t.bytes.data(), t.bytes.size())) + "\"";
      metadata[kChecksumKey] = sums + "}";
    }
    if (!metadata.empty()) {
      header += "\"__metadata__\":{";
      bool f2 = true;
      for (const auto& [k, v] : metadata) {
        if (!f2) header += ',';
        header += detail::json_quote(k);
        header += ':';
        header += detail::json_quote(v);
        f2 = false;
      }
      header += "}";
      first = false;
    }
    size_t offset = 0;
    for (const auto& t : tensors_) {
      if (!first) header += ',';
      header += detail::json_quote(t.name);
      header += ":{\"dtype\":\"";
      header += t.dtype;
      header += "\",\"shape\":[";
      for (int i = 0; i < t.shape.rank(); ++i) {
        if (i) header += ',';
        header += std::to_string(t.shape[i]);
      }
      header += "],\"data_offsets\":[";
      header += std::to_string(offset);
      header += ',';
      header += std::to_string(offset + t.bytes.size());
      header += "]}";
      offset += t.bytes.size();
      first = false;
    }
    header += "}";
    while (header.size() % 8 != 0) header += ' ';  // the data buffer starts 8-byte aligned
    std::string out(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    out += header;
    out.reserve(out.size() + offset);
    for (const auto& t : tensors_) out += t.bytes;
    return out;
  }

  // Atomic write: temporary file in the same directory, fsync, rename over path, fsync of the directory.
  void write(const std::string& path) const {
    const std::string contents = serialize();
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    std::string tmpl = path + ".tmp.XXXXXX";
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    const int fd = ::mkstemp(name.data());
    require(fd >= 0, path, ": cannot create a temporary file in '", dir, "': ", detail::errno_text());
    const std::string tmp(name.data());
    try {
      detail::write_all(fd, contents.data(), contents.size(), tmp);
      require(::fsync(fd) == 0, tmp, ": fsync failed: ", detail::errno_text());
      ::fchmod(fd, 0644);
    } catch (...) {
      ::close(fd);
      ::unlink(tmp.c_str());
      throw;
    }
    if (::close(fd) != 0) {
      const std::string e = detail::errno_text();
      ::unlink(tmp.c_str());
      fail(tmp, ": close failed: ", e);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const std::string e = detail::errno_text();
      ::unlink(tmp.c_str());
      fail(path, ": cannot rename the temporary file into place: ", e);
    }
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
      ::fsync(dfd);  // best effort: makes the rename durable
      ::close(dfd);
    }
  }

 private:
  struct Entry {
    std::string name, dtype;
    Shape shape;
    std::string bytes;
  };
  std::vector<Entry> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  bool checksums_ = false;

  static int64_t checked_numel(const std::string& name, const Shape& shape) {
    require(!name.empty(), "SafetensorsWriter: empty tensor name");
    require(name != "__metadata__", "SafetensorsWriter: '__metadata__' is reserved and cannot name a tensor");
    int64_t n = 1;
    for (int i = 0; i < shape.rank(); ++i) {
      require(shape[i] >= 0, "SafetensorsWriter: tensor '", name, "' has a negative size in ", shape.to_string());
      require(shape[i] == 0 || n <= (int64_t{1} << 48) / shape[i], "SafetensorsWriter: tensor '", name,
              "' is too large: ", shape.to_string());
      n *= shape[i];
    }
    return n;
  }
  void insert(std::string name, std::string dtype, Shape shape, std::string bytes) {
    require(!index_.count(name), "SafetensorsWriter: tensor '", name, "' added twice");
    index_[name] = tensors_.size();
    tensors_.push_back({std::move(name), std::move(dtype), shape, std::move(bytes)});
  }
};

// ---- reading --------------------------------------------------------------------------------------------
class SafetensorsFile {
 public:
  struct TensorInfo {
    std::string dtype;
    Shape shape;
    int64_t begin = 0, end = 0;  // byte offsets into the data buffer
  };

  // Opens and validates a file; throws retnet::Error naming the file and the problem. The file stays open:
  // every tensor is read through this one descriptor, so all reads see the same file even when another
  // process replaces it (rename) meanwhile.
  static SafetensorsFile open(const std::string& path) {
    return from_source(path, std::make_shared<const detail::FileSource>(path));
  }

  // The same for the contents of a file held in memory; `name` stands for the path in messages.
  static SafetensorsFile from_bytes(std::string bytes, const std::string& name = "<memory>") {
    return from_source(name, std::make_shared<const detail::MemorySource>(std::move(bytes)));
  }

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const {
    std::vector<std::string> r;
    r.reserve(tensors_.size());
    for (const auto& [k, v] : tensors_) r.push_back(k);
    return r;
  }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const {
    auto it = tensors_.find(name);
    require(it != tensors_.end(), path_, ": no tensor named '", name, "'");
    return it->second;
  }
  Shape shape(const std::string& name) const { return info(name).shape; }
  std::string dtype(const std::string& name) const { return info(name).dtype; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Reads tensor `name` into out[numel], converting its dtype to T. Floating T accepts F64, F32, F16, BF16;
  // integer T accepts the integer dtypes (range-checked). The stored shape must equal `expected`.
  template <class T>
  void read(const std::string& name, T* out, const Shape& expected) const {
    static_assert(std::is_arithmetic_v<T>, "SafetensorsFile::read: T must be arithmetic");
    const TensorInfo& t = info(name);
    require(t.shape == expected, path_, ": tensor '", name, "' has shape ", t.shape.to_string(), ", expected ",
            expected.to_string());
    const int64_t n = t.shape.numel();
    const std::string bytes = read_bytes(name, t);
    const char* b = bytes.data();
    auto load = [&](auto tag) {
      using S = decltype(tag);
      for (int64_t i = 0; i < n; ++i) {
        S s;
        std::memcpy(&s, b + i * static_cast<int64_t>(sizeof(S)), sizeof(S));
        out[i] = static_cast<T>(s);
      }
    };
    if constexpr (std::is_floating_point_v<T>) {
      if (t.dtype == "F32") {
        load(float{});
      } else if (t.dtype == "F64") {
        load(double{});
      } else if (t.dtype == "F16" || t.dtype == "BF16") {
        const bool bf = t.dtype == "BF16";
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, b + 2 * i, 2);
          out[i] = static_cast<T>(bf ? detail::bf16_to_float(h) : detail::f16_to_float(h));
        }
      } else {
        fail(path_, ": tensor '", name, "' has dtype ", t.dtype,
             ", which cannot be read as floating point (expected F64, F32, F16 or BF16)");
      }
    } else {
      auto load_int = [&](auto tag) {
        using S = decltype(tag);
        for (int64_t i = 0; i < n; ++i) {
          S s;
          std::memcpy(&s, b + i * static_cast<int64_t>(sizeof(S)), sizeof(S));
          require(std::in_range<T>(s), path_, ": tensor '", name, "' element ", i, " = ", +s,
                  " does not fit the requested integer type");
          out[i] = static_cast<T>(s);
        }
      };
      if (t.dtype == "I64")
        load_int(int64_t{});
      else if (t.dtype == "I32")
        load_int(int32_t{});
      else if (t.dtype == "I16")
        load_int(int16_t{});
      else if (t.dtype == "I8")
        load_int(int8_t{});
      else if (t.dtype == "U64")
        load_int(uint64_t{});
      else if (t.dtype == "U32")
        load_int(uint32_t{});
      else if (t.dtype == "U16")
        load_int(uint16_t{});
      else if (t.dtype == "U8" || t.dtype == "BOOL")
        load_int(uint8_t{});
      else
        fail(path_, ": tensor '", name, "' has dtype ", t.dtype, ", which cannot be read as an integer");
    }
  }

  // Validates a header (exposed for tests): `data_size` is the number of bytes after the header.
  static SafetensorsFile from_header(const std::string& path, const std::string& header, int64_t data_size) {
    SafetensorsFile f;
    f.path_ = path;
    f.data_start_ = 8 + static_cast<int64_t>(header.size());
    f.data_size_ = data_size;
    detail::JsonValue root = detail::JsonParser(header.data(), header.size(), path).parse_document();
    require(root.kind == detail::JsonValue::object, path, ": the header is not a JSON object");
    std::vector<std::pair<int64_t, int64_t>> ranges;  // (begin, end) of non-empty tensors
    std::vector<std::string> range_names;
    bool seen_meta = false;
    for (auto& [name, v] : root.fields) {
      if (name == "__metadata__") {
        require(!seen_meta, path, ": duplicate '__metadata__' entry");
        seen_meta = true;
        require(v.kind == detail::JsonValue::object || v.kind == detail::JsonValue::null, path,
                ": '__metadata__' must be an object of strings");
        for (auto& [k, s] : v.fields) {
          require(s.kind == detail::JsonValue::string, path, ": metadata '", k, "' is not a string");
          require(!f.metadata_.count(k), path, ": duplicate metadata key '", k, "'");
          f.metadata_[k] = s.text;
        }
        continue;
      }
      const std::string what = path + ": tensor '" + name + "'";
      require(!f.tensors_.count(name), path, ": duplicate tensor name '", name, "'");
      require(v.kind == detail::JsonValue::object, what, ": entry is not a JSON object");
      const detail::JsonValue *dt = nullptr, *sh = nullptr, *off = nullptr;
      for (auto& [k, x] : v.fields) {
        const detail::JsonValue** slot = k == "dtype" ? &dt : k == "shape" ? &sh : k == "data_offsets" ? &off : nullptr;
        require(slot != nullptr, what, ": unknown field '", k, "'");
        require(*slot == nullptr, what, ": duplicate field '", k, "'");
        *slot = &x;
      }
      require(dt && dt->kind == detail::JsonValue::string, what, ": missing or non-string 'dtype'");
      require(sh && sh->kind == detail::JsonValue::array, what, ": missing or non-array 'shape'");
      require(off && off->kind == detail::JsonValue::array && off->items.size() == 2, what,
              ": 'data_offsets' must be an array [begin, end]");
      TensorInfo t;
      t.dtype = dt->text;
      const int64_t esize = detail::dtype_size(t.dtype);
      require(esize > 0, what, ": unknown dtype '", t.dtype, "'");
      require(sh->items.size() <= static_cast<size_t>(Shape::max_rank), what, ": rank ", sh->items.size(),
              " exceeds the supported maximum ", Shape::max_rank);
      std::vector<int64_t> dims;
      int64_t numel = 1;
      for (const auto& d : sh->items) {
        int64_t x = 0;
        require(detail::json_to_index(d, x), what, ": shape entries must be non-negative integers");
        require(x == 0 || numel <= (int64_t{1} << 56) / x, what, ": shape is too large");
        numel *= x;
        dims.push_back(x);
      }
      t.shape = Shape(dims);
      require(detail::json_to_index(off->items[0], t.begin) && detail::json_to_index(off->items[1], t.end), what,
              ": data_offsets must be non-negative integers");
      require(t.begin <= t.end, what, ": data_offsets [", t.begin, ", ", t.end, "] are reversed");
      require(t.end <= data_size, what, ": data_offsets [", t.begin, ", ", t.end, "] reach past the end of the data (",
              data_size, " bytes); the file is truncated or the header is wrong");
      require(t.end - t.begin == numel * esize, what, ": data_offsets [", t.begin, ", ", t.end, "] span ",
              t.end - t.begin, " bytes but dtype ", t.dtype, " x shape ", t.shape.to_string(), " needs ",
              numel * esize);
      if (t.end > t.begin) {
        ranges.emplace_back(t.begin, t.end);
        range_names.push_back(name);
      }
      f.tensors_.emplace(name, std::move(t));
    }
    std::vector<size_t> order(ranges.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
    for (size_t i = 1; i < order.size(); ++i)
      require(ranges[order[i]].first >= ranges[order[i - 1]].second, path, ": tensors '", range_names[order[i - 1]],
              "' and '", range_names[order[i]], "' overlap in the data buffer");
    f.parse_checksums();
    return f;
  }

 private:
  std::string path_;
  int64_t data_start_ = 0, data_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, uint64_t> checksums_;  // from kChecksumKey, when the writer stored them
  std::shared_ptr<const detail::ByteSource> source_;

  static SafetensorsFile from_source(const std::string& path, std::shared_ptr<const detail::ByteSource> src) {
    const int64_t size = src->size();
    require(size >= 8, path, ": not a safetensors file: ", size, " bytes, shorter than the 8-byte header length");
    uint64_t n = 0;
    require(src->read(0, reinterpret_cast<char*>(&n), 8), path, ": cannot read the header length");
    constexpr uint64_t max_header = 100u << 20;  // the reference implementation's limit
    require(n >= 2 && n <= max_header, path, ": header length ", n, " is implausible (expected 2 .. ", max_header,
            " bytes); not a safetensors file or corrupted");
    require(n <= static_cast<uint64_t>(size) - 8, path, ": truncated: the header claims ", n,
            " bytes but the file has ", size, " bytes");
    std::string header(static_cast<size_t>(n), '\0');
    require(src->read(8, header.data(), header.size()), path, ": cannot read the ", n, "-byte header");
    SafetensorsFile f = from_header(path, header, size - 8 - static_cast<int64_t>(n));
    f.source_ = std::move(src);
    return f;
  }

  // Parses the checksum table; names it lists must be tensors of the file.
  void parse_checksums() {
    auto it = metadata_.find(kChecksumKey);
    if (it == metadata_.end()) return;
    const detail::JsonValue v =
        detail::JsonParser(it->second.data(), it->second.size(), path_ + " (metadata '" + kChecksumKey + "')")
            .parse_document();
    require(v.kind == detail::JsonValue::object, path_, ": metadata '", kChecksumKey, "' is not a JSON object");
    for (const auto& [name, x] : v.fields) {
      require(tensors_.count(name), path_, ": metadata '", kChecksumKey, "' names '", name,
              "', which is not a tensor of the file");
      require(x.kind == detail::JsonValue::string && x.text.size() == 16 &&
                  x.text.find_first_not_of("0123456789abcdef") == std::string::npos,
              path_, ": metadata '", kChecksumKey, "' for '", name, "' is not 16 hex digits");
      checksums_[name] = std::stoull(x.text, nullptr, 16);
    }
  }

  std::string read_bytes(const std::string& name, const TensorInfo& t) const {
    std::string bytes(static_cast<size_t>(t.end - t.begin), '\0');
    if (!bytes.empty())
      require(source_ && source_->read(data_start_ + t.begin, bytes.data(), bytes.size()), path_,
              ": cannot read the data of tensor '", name, "' (the file was truncated after opening)");
    auto sum = checksums_.find(name);
    if (sum != checksums_.end()) {
      const uint64_t got = detail::fnv1a64(bytes.data(), bytes.size());
      require(got == sum->second, path_, ": tensor '", name, "' is corrupted: its bytes have checksum ",
              detail::hex64(got), ", the header records ", detail::hex64(sum->second));
    }
    return bytes;
  }
};

// True when `name` belongs to the group stored under `prefix` (see the comment at the top).
inline bool in_param_scope(const std::string& name, const std::string& prefix) {
  return name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
         name.find('/', prefix.size()) == std::string::npos;
}

// Loads every parameter of `table` (stored as prefix + name) into data[table.total()]. Strict: all names present
// with the table's shapes and a floating dtype, no other names in the prefix's scope. Everything is checked and
// read into a scratch buffer first, so on error `data` is left untouched.
// `allowed_extra` lists further in-scope names that are tolerated (e.g. torchscale's buffers; see io/model_io.hpp).
template <class T>
void load_params(const SafetensorsFile& file, const ParamTable& table, T* data, const std::string& prefix = "",
                 const std::vector<std::string>& allowed_extra = {}) {
  std::vector<std::string> missing, wrong, unexpected;
  for (const auto& p : table.entries()) {
    const std::string name = prefix + p.name;
    if (!file.contains(name))
      missing.push_back(name);
    else if (!(file.shape(name) == p.shape))
      wrong.push_back(name + " " + file.shape(name).to_string() + " (expected " + p.shape.to_string() + ")");
  }
  for (const auto& n : file.names())
    if (in_param_scope(n, prefix) && table.find(n.substr(prefix.size())) == nullptr &&
        std::find(allowed_extra.begin(), allowed_extra.end(), n) == allowed_extra.end())
      unexpected.push_back(n);
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 8) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  std::string problems;
  if (!missing.empty()) problems += "; missing: " + list(missing);
  if (!wrong.empty()) problems += "; wrong shape: " + list(wrong);
  if (!unexpected.empty()) problems += "; unexpected: " + list(unexpected);
  require(problems.empty(), file.path(), ": does not match the parameter table",
          prefix.empty() ? "" : " under prefix '", prefix, prefix.empty() ? "" : "'", problems);
  std::vector<T> scratch(static_cast<size_t>(table.total()), T{});
  for (const auto& p : table.entries()) file.read(prefix + p.name, scratch.data() + p.offset, p.shape);
  std::copy(scratch.begin(), scratch.end(), data);
}

// Adds every parameter of `table` as prefix + name. dtype "" stores T natively (F32 or F64); "F16"/"BF16"/"F32"/
// "F64" converts.
template <class T>
void save_params(SafetensorsWriter& writer, const ParamTable& table, const T* data, const std::string& prefix = "",
                 const std::string& dtype = "") {
  for (const auto& p : table.entries()) {
    if (dtype.empty())
      writer.add(prefix + p.name, p.shape, data + p.offset);
    else
      writer.add(prefix + p.name, p.shape, data + p.offset, dtype);
  }
}

}  // namespace retnet::io
