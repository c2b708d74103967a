// Reliability of `towerrec train` under crashes and interrupts: SIGKILL at
// random moments never leaves a checkpoint that fails to load and a resumed
// run still ends bit-identical to an uninterrupted one; SIGINT/SIGTERM write a
// checkpoint and exit 130/143; a diverging run keeps the last good
// checkpoint; a full disk is reported with sizes and leaves no partial file;
// bad inputs name file, line and field and leave no output. CPU, --threads 1.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.h"
#include "tests/work_dir.h"
#include "towerrec/checkpoint.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {
namespace {

namespace fs = std::filesystem;

using testing::work_dir;
std::string path(const std::string& name) { return testing::work_path(name); }

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> w;
  std::string cur;
  for (char c : s) {
    if (c == ' ') {
      if (!cur.empty()) w.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) w.push_back(cur);
  return w;
}

// Starts `towerrec ARGS` with stdout and stderr to files (stderr to a pipe
// when `err_pipe` is given).
pid_t spawn(const std::string& args, const std::string& log, int* err_pipe = nullptr) {
  std::vector<std::string> w = words(args);
  w.insert(w.begin(), testing::cli_path());
  int fds[2] = {-1, -1};
  if (err_pipe && ::pipe(fds) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(err_pipe ? fds[1] : out, 2);
    if (err_pipe) ::close(fds[0]);
    std::vector<char*> argv;
    for (auto& s : w) argv.push_back(s.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  if (err_pipe) {
    ::close(fds[1]);
    *err_pipe = fds[0];
  }
  return pid;
}

struct Exit {
  int code = -1;    // exit status, or -1
  int signal = 0;   // terminating signal, or 0
};
Exit wait_for(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  Exit e;
  if (WIFEXITED(st)) e.code = WEXITSTATUS(st);
  if (WIFSIGNALED(st)) e.signal = WTERMSIG(st);
  return e;
}

struct Result {
  int rc = -1;
  std::string out;
};
Result run(const std::string& args) {
  static int n = 0;
  const std::string log = path("log." + std::to_string(n++));
  const Exit e = wait_for(spawn(args, log));
  return {e.code, read_file(log)};
}

std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  if (!is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp.") != std::string::npos)
      out.push_back(e.path().filename().string());
  return out;
}

void expect_same_state(const Checkpoint& a, const Checkpoint& b) {
  EXPECT_EQ(a.epochs_done, b.epochs_done);
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.state.steps, b.state.steps);
  EXPECT_EQ(a.state.names, b.state.names);
  EXPECT_TRUE(a.state.tensors == b.state.tensors) << "model state differs (not bit-identical)";
}

bool all_finite(const Checkpoint& ck) {
  for (const auto& t : ck.state.tensors)
    for (float x : t)
      if (!std::isfinite(x)) return false;
  return true;
}

// A small data set and the uninterrupted reference run, built once.
class Interrupts : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const Result s = run("synth --out " + path("syn") +
                         " --users 1500 --items 300 --interactions-per-user 20 --seed 11");
    ASSERT_EQ(s.rc, 0) << s.out;
    const Result r = run(train_args() + " --out " + path("whole"));
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  static std::string train_args() {
    return "train --data " + path("syn") +
           " --threads 1 --batch-size 32 --hidden 16 --dim 8 --id-dim 8 --epochs 3"
           " --checkpoint-every-steps 7 --log-every 5";
  }
};

// Up to 8 SIGKILLs at random moments; after each, the newest checkpoint loads
// (temporary files are never read in its place), and a final --resume ends
// bit-identical to the uninterrupted run with no temporary file left.
TEST_F(Interrupts, SigkillAtRandomMomentsThenResumeIsBitIdentical) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("TOWERREC_TEST_SEED=" + std::to_string(seed));
  std::mt19937_64 g(seed);
  const std::string out = path("killed");
  int kills = 0, loaded = 0;
  for (int round = 0; round < 8; ++round) {
    const pid_t pid = spawn(train_args() + " --resume --quiet --out " + out, path("kill.log"));
    ASSERT_GT(pid, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(10, 200)(g)));
    ::kill(pid, SIGKILL);
    const Exit e = wait_for(pid);
    if (e.signal == SIGKILL) ++kills;
    else ASSERT_EQ(e.code, 0) << read_file(path("kill.log"));  // it finished before the kill
    if (file_exists(out + "/model.ckpt")) {
      const Checkpoint ck = load_checkpoint(out + "/model.ckpt");  // never torn
      EXPECT_TRUE(all_finite(ck));
      ++loaded;
    }
    if (e.code == 0) break;
  }
  std::printf("%d kills, %d checkpoints loaded after them\n", kills, loaded);
  const Result fin = run(train_args() + " --resume --quiet --out " + out);
  ASSERT_EQ(fin.rc, 0) << fin.out;
  expect_same_state(load_checkpoint(out + "/model.ckpt"), load_checkpoint(path("whole/model.ckpt")));
  EXPECT_TRUE(temp_files(out).empty()) << temp_files(out)[0];
}

// Temporary files of a killed writer are removed at the next start; other
// files are left alone.
TEST_F(Interrupts, StaleTemporaryFilesAreRemoved) {
  const std::string out = path("stale");
  make_directories(out);
  // 4194304 is above Linux's largest pid_max: no process has it.
  std::ofstream(out + "/model.ckpt.tmp.4194304") << "torn";
  std::ofstream(out + "/model.ckpt.tmp.notapid") << "keep";
  EXPECT_EQ(remove_stale_temp_files(out + "/model.ckpt"), 1);
  EXPECT_FALSE(file_exists(out + "/model.ckpt.tmp.4194304"));
  EXPECT_TRUE(file_exists(out + "/model.ckpt.tmp.notapid"));
}

// SIGINT and SIGTERM: the current step finishes, a checkpoint is written, the
// exit status is 128 + the signal; --resume then ends bit-identical.
TEST_F(Interrupts, SignalWritesCheckpointAndResumeIsBitIdentical) {
  for (int sig : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(sig == SIGINT ? "SIGINT" : "SIGTERM");
    const std::string out = path(sig == SIGINT ? "sigint" : "sigterm");
    int err = -1;
    const pid_t pid = spawn(train_args() + " --out " + out, path("sig.log"), &err);
    ASSERT_GT(pid, 0);
    // Wait for the first progress line: training (and the handler) has started.
    std::string text;
    char buf[4096];
    bool sent = false;
    for (ssize_t n; (n = ::read(err, buf, sizeof buf)) > 0;) {
      text.append(buf, static_cast<size_t>(n));
      if (!sent && text.find(" step ") != std::string::npos) {
        ::kill(pid, sig);
        sent = true;
      }
    }
    ::close(err);
    const Exit e = wait_for(pid);
    ASSERT_TRUE(sent) << text;
    EXPECT_EQ(e.signal, 0) << text;
    EXPECT_EQ(e.code, 128 + sig) << text;
    EXPECT_NE(text.find(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : "SIGTERM")),
              std::string::npos) << text;
    const Checkpoint ck = load_checkpoint(out + "/model.ckpt");
    EXPECT_TRUE(ck.step > 0 || ck.epochs_done > 0);
    EXPECT_TRUE(temp_files(out).empty());
    const Result fin = run(train_args() + " --resume --log-every 100000 --out " + out);
    ASSERT_EQ(fin.rc, 0) << fin.out;
    EXPECT_NE(fin.out.find("resuming from"), std::string::npos) << fin.out;
    expect_same_state(load_checkpoint(out + "/model.ckpt"), load_checkpoint(path("whole/model.ckpt")));
  }
}

// A huge SGD learning rate diverges: the run fails naming the divergence and
// the checkpoint it kept, which is the last good (finite) state.
TEST_F(Interrupts, DivergenceKeepsTheLastGoodCheckpoint) {
  const std::string out = path("diverged");
  const std::string base = "train --data " + path("syn") +
                           " --threads 1 --quiet --batch-size 32 --hidden 16 --dim 8 --id-dim 8"
                           " --loss logistic --normalize false --lr-schedule constant";
  ASSERT_EQ(run(base + " --epochs 1 --out " + out).rc, 0);
  const std::string good = read_file(out + "/model.ckpt");
  // From the good checkpoint, with periodic checkpoints.
  const Result r = run(base + " --epochs 3 --resume --optimizer sgd --lr 100 --checkpoint-every-steps 3 --out " + out);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("training diverged"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(out + "/model.ckpt keeps the last good state"), std::string::npos) << r.out;
  const Checkpoint kept = load_checkpoint(out + "/model.ckpt");
  EXPECT_TRUE(all_finite(kept));
  // Without periodic checkpoints the file is the good one, byte for byte.
  std::ofstream(out + "/model.ckpt", std::ios::binary) << good;
  const Result r2 = run(base + " --epochs 3 --resume --optimizer sgd --lr 100 --checkpoint-every-steps 0 --out " + out);
  EXPECT_NE(r2.rc, 0);
  EXPECT_NE(r2.out.find("training diverged"), std::string::npos) << r2.out;
  EXPECT_EQ(read_file(out + "/model.ckpt"), good);
  EXPECT_TRUE(temp_files(out).empty());
}

// A full disk: a 64 KiB tmpfs cannot hold the checkpoint. The error names the
// size needed and what is free; no checkpoint or temporary file is left.
TEST_F(Interrupts, FullDiskIsReportedWithSizesAndLeavesNoPartialFile) {
  const std::string mnt = path("tiny");
  make_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << "): needs root";
  struct Unmount {
    std::string p;
    ~Unmount() { ::umount(p.c_str()); }
  } unmount{mnt};
  const Result r = run("train --data " + path("syn") +
                       " --threads 1 --quiet --epochs 1 --hidden 64 --dim 32 --id-dim 32 --out " + mnt + "/m");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("needs "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bytes free"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("No space left on device"), std::string::npos) << r.out;
  EXPECT_FALSE(file_exists(mnt + "/m/model.ckpt"));
  EXPECT_TRUE(temp_files(mnt + "/m").empty());
}

// AtomicFile::reserve refuses a size no file system holds, naming it.
TEST(AtomicFileReserve, ImpossibleSizeNamesTheBytes) {
  const std::string p = path("huge.bin");
  try {
    AtomicFile f(p);
    f.reserve(uint64_t(1) << 62);
    FAIL() << "reserved 2^62 bytes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs 4611686018427387904 bytes"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(file_exists(p));
  EXPECT_TRUE(temp_files(work_dir()).empty());
}

// Malformed inputs to train: file, line and field named, non-zero exit, and
// no model written.
TEST(BadInputs, TrainNamesFileLineFieldAndWritesNothing) {
  make_directories(path("bad"));
  std::ofstream(path("bad/x.csv")) << "user,item\nu1,i1\nu2,i2\n";
  std::ofstream(path("bad/uf.csv")) << "id,age\nu1,30\nu2,abc|\nu9,1\n";
  Result r = run("train --data " + path("bad/x.csv") + " --user-features " + path("bad/uf.csv") +
                 " --epochs 1 --threads 1 --quiet --out " + path("bad/m1"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("uf.csv:4: field 'id'"), std::string::npos) << r.out;
  EXPECT_FALSE(is_directory(path("bad/m1")));
  make_directories(path("bad/ml"));
  std::ofstream(path("bad/ml/u.data")) << "1\t10\t4\t100\n2\t10\tfive\t101\n";
  r = run("train --data " + path("bad/ml") + " --epochs 1 --threads 1 --quiet --out " + path("bad/m2"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("u.data:2: field 'rating'"), std::string::npos) << r.out;
  EXPECT_FALSE(is_directory(path("bad/m2")));
  std::ofstream(path("bad/c.json")) << "{\"lr\": 0.1,\n \"epochs\": }";
  r = run("train --data " + path("bad/x.csv") + " --config " + path("bad/c.json") + " --out " + path("bad/m3"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("c.json:2"), std::string::npos) << r.out;
  EXPECT_FALSE(is_directory(path("bad/m3")));
}

}  // namespace
}  // namespace towerrec
