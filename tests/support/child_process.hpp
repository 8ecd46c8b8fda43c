#pragma once
/// \file
/// A program run as a child process in a test, its stdout collected line by line (stderr is left
/// to the test's), with waits on lines and on the exit; and reading "key=value" report lines.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace troupe::testkit {

/// A child process whose stdout lines a reader thread collects (stderr is left to the test's).
class Child {
 public:
  explicit Child(std::vector<std::string> args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = fds[0];
    reader_ = std::thread([this] {
      std::string buf;
      char chunk[4096];
      for (ssize_t k; (k = ::read(out_, chunk, sizeof chunk)) > 0;) {
        buf.append(chunk, static_cast<std::size_t>(k));
        for (std::size_t nl; (nl = buf.find('\n')) != std::string::npos; buf.erase(0, nl + 1)) {
          std::lock_guard lk(mu_);
          lines_.push_back(buf.substr(0, nl));
          cv_.notify_all();
        }
      }
    });
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    reader_.join();
    ::close(out_);
  }
  /// Waits for a line that satisfies `pred`; returns it ("" when none came within `limit`).
  std::string wait_line(const std::function<bool(const std::string&)>& pred, std::chrono::milliseconds limit) {
    std::unique_lock lk(mu_);
    std::string found;
    cv_.wait_for(lk, limit, [&] {
      for (const auto& l : lines_) {
        if (pred(l)) return found = l, true;
      }
      return false;
    });
    return found;
  }
  /// Waits for a line containing `text`.
  std::string wait_line(const std::string& text, std::chrono::milliseconds limit) {
    return wait_line([&](const std::string& l) { return l.find(text) != std::string::npos; }, limit);
  }
  /// Waits for the exit (killing the child after `limit`): its exit code, -1 when killed.
  int wait_exit(std::chrono::milliseconds limit) {
    // The exit is an event: a pidfd becomes readable when the child exits.
    const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (fd < 0) throw std::runtime_error("pidfd_open failed");
    pollfd p{fd, POLLIN, 0};
    const auto end = std::chrono::steady_clock::now() + limit;
    int ready;
    do {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      ready = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
    } while (ready < 0 && errno == EINTR);
    ::close(fd);
    if (ready == 0) ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  void signal(int sig) const { ::kill(pid_, sig); }
  /// The latest line containing `text` ("" : none yet).
  std::string last_line(const std::string& text) {
    std::lock_guard lk(mu_);
    for (auto it = lines_.rbegin(); it != lines_.rend(); ++it) {
      if (it->find(text) != std::string::npos) return *it;
    }
    return "";
  }
  std::string output() {
    std::lock_guard lk(mu_);
    std::string all;
    for (const auto& l : lines_) all += l + "\n";
    return all;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
};

inline /// The number after "<key>=" in `line` (-1 when absent).
long long field(const std::string& line, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(line, m, std::regex("(^| )" + key + "=([0-9]+)"))) return -1;
  return std::stoll(m[2]);
}

}  // namespace troupe::testkit
