#pragma once
// What the example programs share: the command-line parser setup (CLI11), validators for numbers, the guard
// around main (every failure is one line on stderr and a non-zero exit: 2 for a bad command line, 1 for
// everything else) and memory estimates checked against the machine before allocating.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "memory_check.hpp"
#include "retnet/core/error.hpp"

#ifndef RETNET_VERSION
#define RETNET_VERSION "unknown"
#endif

namespace retnet_examples {

// A bad command line (exit status 2).
struct UsageError : retnet::Error {
  using retnet::Error::Error;
};

// --help or --version was answered; the program ends with this status.
struct Exit {
  int status;
};

// Common settings: --version, defaults shown in --help.
inline void setup_app(CLI::App& app) {
  app.set_version_flag("--version", app.get_name() + " (retnet " RETNET_VERSION ")");
  app.option_defaults()->always_capture_default();
  app.get_formatter()->column_width(34);
}

// Parses argv[1..] (in order). --help and --version print to stdout and throw Exit{0}; anything else wrong
// throws UsageError naming the flag or value.
inline void parse_args(CLI::App& app, std::vector<std::string> args) {
  std::reverse(args.begin(), args.end());  // CLI11 takes a vector last argument first
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    throw Exit{0};
  } catch (const CLI::CallForAllHelp&) {
    std::cout << app.help("", CLI::AppFormatMode::All);
    throw Exit{0};
  } catch (const CLI::CallForVersion&) {
    std::cout << app.version() << "\n";
    throw Exit{0};
  } catch (const CLI::ParseError& e) {
    throw UsageError(std::string(e.what()) + " (see " + app.get_name() + " --help)");
  }
}

inline std::vector<std::string> args_of(int argc, char** argv) { return {argv + 1, argv + argc}; }

// A floating-point option: finite and within [lo, hi] (NaN and infinities are refused).
inline CLI::Validator finite_in(double lo, double hi, bool open_hi = false) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "finite in [%g, %g%s", lo, hi, open_hi ? ")" : "]");
  const std::string desc = buf;
  return CLI::Validator(
      [lo, hi, open_hi, desc](std::string& s) -> std::string {
        double v = 0;
        try {
          size_t used = 0;
          v = std::stod(s, &used);
          if (used != s.size()) return "'" + s + "' is not a number";
        } catch (const std::exception&) {
          return "'" + s + "' is not a number";
        }
        if (!std::isfinite(v) || v < lo || v > hi || (open_hi && v == hi))
          return "value " + s + " is invalid; expected a number " + desc;
        return {};
      },
      desc);
}

// One line: newlines inside a message become "; ".
inline std::string one_line(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  for (size_t i = 0; (i = s.find('\n', i)) != std::string::npos;) s.replace(i, 1, "; ");
  return s;
}

// Runs body() and turns every exception into one line "name: error: ..." on stderr and an exit status. With
// report false nothing is printed (the other ranks of a data-parallel job, which fail with rank 0's error).
template <class F>
int guarded_main(const char* name, F&& body, bool report_errors = true) {
  auto report = [&](const std::string& msg) {
    if (report_errors) std::cerr << name << ": error: " << one_line(msg) << std::endl;
  };
  try {
    return body();
  } catch (const Exit& e) {
    return e.status;
  } catch (const UsageError& e) {
    report(e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    report("out of memory (the sizes asked for do not fit this machine)");
  } catch (const std::exception& e) {
    report(e.what());
  } catch (...) {
    report("unknown exception");
  }
  return 1;
}

}  // namespace retnet_examples
