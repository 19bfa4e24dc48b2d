#include "bench/history_build.h"

#include <sys/stat.h>

#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "bench/report.h"
#include "common/sqlite.h"
#include "nfq/history_schema.h"
#include "nfq/history_store.h"

namespace smtpfence::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

// Changed whenever the records generated change: a store of another generator is
// built again rather than reused.
constexpr int kGenerator = 1;
constexpr std::uint32_t kFirstUid = 10001;
constexpr std::int64_t kSpan = std::int64_t{90} * 86400 - 60;  // 90 days up to the build
// The worker commits after every turn of its loop; under a flood a turn holds a few
// thousand records. A checkpoint every tenth commit (the reconciler's second).
constexpr std::size_t kPerCommit = 4000;
constexpr std::uint64_t kCheckpointEvery = 10;

// The scripts that send: the executable, the folder under public_html and the command
// line around the script's folder.
struct Script {
    const char* exe;
    const char* folder;
    const char* before;
    const char* after;
};
constexpr std::array<Script, 5> kScripts{{
    {"/usr/bin/php8.2", "", "/usr/bin/php8.2 -q ", "/wp-cron.php"},
    {"/usr/bin/php8.2", "/wp-content/plugins/contact-form-7", "php8.2 ", "/includes/mail.php"},
    {"/usr/local/php81/bin/php", "/newsletter", "/usr/local/php81/bin/php ",
     "/send.php --batch=500"},
    {"/usr/bin/perl", "/cgi-bin", "/usr/bin/perl ", "/formmail.pl"},
    {"/usr/bin/python3.11", "/app", "python3 ", "/notify.py --smtp"},
}};
constexpr std::array<const char*, 20> kStems{
    "anna", "bakery", "cafe",  "dental", "events", "florist", "garden", "hotel",  "immo", "jazz",
    "kita", "law",    "media", "nails",  "optik",  "photo",   "quilt",  "reisen", "shop", "tours"};

struct Proc {
    std::string exe, cwd, cmdline;
};

// What the generator draws from: per account its scripts' processes (and the web
// server's for that account), destinations.
struct Catalogue {
    std::vector<std::vector<Proc>> procs;  // per account
    std::vector<Proc> web;                 // per account: php-fpm in its folder
    std::vector<std::string> dst4, dst6;
    std::vector<double> cumulative;  // of the accounts' weights

    explicit Catalogue(const Population& pop) {
        double sum = 0;
        for (std::size_t i = 0; i < pop.accounts.size(); ++i) {
            const BenchAccount& a = pop.accounts[i];
            const std::string root = "/home/" + a.name + "/domains/" + a.domain + "/public_html";
            std::vector<Proc> mine;
            for (const Script& s : kScripts) {
                const std::string cwd = root + s.folder;
                mine.push_back({s.exe, cwd, s.before + cwd + s.after});
            }
            procs.push_back(std::move(mine));
            web.push_back({"/usr/sbin/php-fpm8.2", root, "php-fpm: pool " + a.domain});
            // Very unequal, as senders are: the first account sends about 5 % of all.
            sum += 1.0 / std::pow(static_cast<double>(i + 1), 0.9);
            cumulative.push_back(sum);
        }
        for (const char* net : {"192.0.2.", "198.51.100.", "203.0.113."}) {
            for (int host = 1; host < 255; ++host)
                dst4.push_back(net + std::to_string(host));
        }
        for (int i = 1; i <= 300; ++i)
            dst6.push_back(strf("2001:db8:%x::%x", 0x100 + i % 17, 0x19 + i));
    }
};

// One record of the stream the worker writes.
struct Item {
    bool counted = false;
    nfq::Attempt attempt;
    nfq::CountedOnly counted_only;
};

class Generator {
  public:
    Generator(const Population& pop, std::uint64_t records, std::time_t end)
        : pop_(pop), cat_(pop), records_(records), start_(end - kSpan) {}

    Item next(std::uint64_t i) {
        const std::time_t epoch =
            start_ + static_cast<std::time_t>(static_cast<double>(i) * static_cast<double>(kSpan) /
                                              static_cast<double>(records_));
        const double pick = std::uniform_real_distribution<double>(0, cat_.cumulative.back())(rng_);
        const std::size_t acc = static_cast<std::size_t>(
            std::lower_bound(cat_.cumulative.begin(), cat_.cumulative.end(), pick) -
            cat_.cumulative.begin());
        const BenchAccount& a = pop_.accounts[std::min(acc, pop_.accounts.size() - 1)];
        const std::uint64_t roll = rng_() % 100;
        Item item;
        if (roll < 2) {  // beyond the per-uid rate limit: counted, not explained
            item.counted = true;
            item.counted_only = {.time = epoch,
                                 .uid = a.uid,
                                 .user = a.name,
                                 .account = a.name,
                                 .count = 1 + rng_() % 40};
            return item;
        }
        nfq::Attempt& at = item.attempt;
        at.time = epoch;
        at.uid = a.uid;
        at.gid = a.uid;
        at.user = a.name;
        at.account = a.name;
        if (roll < 7) {  // the web server's uid, billed by working directory
            at.uid = at.gid = Population::kWebUid;
            at.user = Population::kWebUser;
            set_proc(at, cat_.web[acc]);
        } else if (roll >= 10) {  // else: gone before the worker looked (unidentified)
            const std::vector<Proc>& mine = cat_.procs[acc];
            set_proc(at, mine[(acc + rng_() % 3 + (rng_() % 8 == 0 ? 3 : 0)) % mine.size()]);
        }
        const bool v6 = rng_() % 10 == 0;
        at.family = v6 ? "ipv6" : "ipv4";
        at.src = v6 ? "2001:db8:1::10" : "198.51.100.10";
        const std::vector<std::string>& dsts = v6 ? cat_.dst6 : cat_.dst4;
        // A few big providers take most of the mail.
        const double r = std::uniform_real_distribution<double>(0, 1)(rng_);
        at.dst = dsts[static_cast<std::size_t>(r * r * r * static_cast<double>(dsts.size()))];
        at.sport = static_cast<std::uint16_t>(32768 + rng_() % 28000);
        const std::uint64_t port = rng_() % 10;
        at.dport = port < 6 ? 25 : port < 9 ? 587 : 465;
        return item;
    }

  private:
    void set_proc(nfq::Attempt& at, const Proc& p) {
        at.identified = true;
        at.pid = static_cast<pid_t>(1000 + rng_() % 4000000);
        at.exe = p.exe;
        at.cwd = p.cwd;
        at.cmdline = p.cmdline;
    }

    const Population& pop_;
    Catalogue cat_;
    std::uint64_t records_;
    std::time_t start_;
    std::mt19937_64 rng_{20261208};
};

json meta_of(const StoreInfo& s) {
    return {{"records", s.records},
            {"schema", nfq::history::kSchemaVersion},
            {"generator", kGenerator},
            {"built", s.built},
            {"write_seconds", s.write_seconds},
            {"last_tenth_seconds", s.last_tenth_seconds},
            {"commits", s.commits},
            {"checkpoints", s.checkpoints},
            {"counted_only", s.counted_only},
            {"file_bytes", s.file_bytes}};
}

// The store in info.dir when it was built for these records, schema and generator.
bool reusable(StoreInfo& info) {
    std::ifstream in(info.dir + "/bench.json");
    const json j = json::parse(in, nullptr, false);
    if (!j.is_object() || j.value("records", std::uint64_t{0}) != info.records ||
        j.value("schema", 0) != nfq::history::kSchemaVersion ||
        j.value("generator", 0) != kGenerator) {
        return false;
    }
    auto db = sql::Database::open(info.state_dir + "/" + nfq::history::kFileName,
                                  sql::Database::Mode::ReadOnly);
    if (!db)
        return false;
    auto version = db->query_int("PRAGMA user_version");
    if (!version || version->value_or(0) != nfq::history::kSchemaVersion)
        return false;
    info.built = j.value("built", std::time_t{0});
    info.write_seconds = j.value("write_seconds", 0.0);
    info.last_tenth_seconds = j.value("last_tenth_seconds", 0.0);
    info.commits = j.value("commits", std::uint64_t{0});
    info.checkpoints = j.value("checkpoints", std::uint64_t{0});
    info.counted_only = j.value("counted_only", std::uint64_t{0});
    info.reused = true;
    return true;
}

Result<void> build(StoreInfo& info) {
    const Population pop = Population::make(kAccounts);
    info.built = std::time(nullptr);
    Generator gen(pop, info.records, info.built);
    auto store = nfq::HistoryStore::open(
        info.state_dir, nfq::HistoryLimits{.days = 3650, .max_bytes = std::uint64_t{1} << 40U});
    if (!store)
        return std::unexpected(store.error());
    std::map<std::uint32_t, std::uint64_t> kernel;  // what the kernel would have counted
    std::vector<Item> batch;
    const std::uint64_t last_tenth = info.records - info.records / 10;
    double seconds = 0;
    for (std::uint64_t i = 0; i < info.records;) {
        batch.clear();
        for (; i < info.records && batch.size() < kPerCommit; ++i)
            batch.push_back(gen.next(i));
        for (const Item& it : batch) {
            kernel[it.counted ? it.counted_only.uid : it.attempt.uid] +=
                it.counted ? it.counted_only.count : 1;
        }
        nfq::Checkpoint cp;
        const bool with_checkpoint =
            (info.commits + 1) % kCheckpointEvery == 0 || i == info.records;
        if (with_checkpoint) {
            cp = {.time = batch.back().counted ? batch.back().counted_only.time
                                               : batch.back().attempt.time,
                  .set_handle = 7,
                  .kernel = kernel};
        }
        // Only the writer's calls are timed, not the generator's.
        const auto t0 = Clock::now();
        for (const Item& it : batch) {
            if (it.counted)
                store->counted_only(it.counted_only);
            else
                store->explained(it.attempt);
        }
        if (with_checkpoint) {
            store->checkpoint(cp);
            ++info.checkpoints;
        }
        if (auto r = store->commit(); !r)
            return std::unexpected(r.error());
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        seconds += s;
        if (i > last_tenth)
            info.last_tenth_seconds += s;
        ++info.commits;
        for (const Item& it : batch)
            info.counted_only += it.counted ? 1 : 0;
        if (info.commits % 100 == 0)
            note("  %s of %s records written\n", grouped(i).c_str(), grouped(info.records).c_str());
    }
    info.write_seconds = seconds;
    if (store->counters().write_errors != 0) {
        return fail(EIO, store->path(),
                    std::to_string(store->counters().write_errors) + " record(s) not written");
    }
    return {};
}

}  // namespace

Population Population::make(std::size_t accounts) {
    Population p;
    for (std::size_t i = 0; i < accounts; ++i) {
        std::string name = strf("%s%03zu", kStems[i % kStems.size()], i / kStems.size());
        p.accounts.push_back({name, kFirstUid + static_cast<std::uint32_t>(i), name + ".example"});
    }
    return p;
}

std::string Population::passwd() const {
    std::string out =
        "root:x:0:0:root:/root:/bin/sh\nmail:x:8:8:mail:/var/mail:/usr/sbin/nologin\n"
        "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n";
    for (const BenchAccount& a : accounts) {
        out += strf("%s:x:%u:%u::/home/%s:/bin/sh\n", a.name.c_str(), a.uid, a.uid, a.name.c_str());
    }
    return out;
}

std::string Population::group() const {
    std::string out = "root:x:0:\nmail:x:8:\nwww-data:x:33:\n";
    for (const BenchAccount& a : accounts)
        out += strf("%s:x:%u:\n", a.name.c_str(), a.uid);
    return out;
}

Result<std::uint64_t> checkpointed_size(const std::string& state_dir) {
    const std::string path = state_dir + "/" + nfq::history::kFileName;
    {
        auto db = sql::Database::open(path, sql::Database::Mode::Create);
        if (!db)
            return std::unexpected(db.error());
        if (auto r = db->exec("PRAGMA wal_checkpoint(TRUNCATE)"); !r)
            return std::unexpected(r.error());
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        return fail(errno, "stat " + path);
    return static_cast<std::uint64_t>(st.st_size);
}

Result<StoreInfo> build_or_reuse(std::uint64_t records, bool fresh) {
    StoreInfo info;
    info.records = records;
    info.dir = std::string(kStoreRoot) + "/" + std::to_string(records);
    info.state_dir = info.dir + "/state";
    if (!fresh && reusable(info)) {
        auto size = checkpointed_size(info.state_dir);
        if (!size)
            return std::unexpected(size.error());
        info.file_bytes = *size;
        return info;
    }
    std::error_code ec;
    fs::remove_all(info.dir, ec);
    // Root's alone, as a real STATE_DIR: other customers' command lines.
    for (const std::string& d : {std::string(kStoreRoot), info.dir}) {
        if (::mkdir(d.c_str(), 0700) != 0 && errno != EEXIST)
            return fail(errno, "create " + d);
    }
    note("building %s records in %s (reused by later runs; --fresh rebuilds)...\n",
         grouped(records).c_str(), info.state_dir.c_str());
    if (auto r = build(info); !r)
        return std::unexpected(r.error());
    auto size = checkpointed_size(info.state_dir);
    if (!size)
        return std::unexpected(size.error());
    info.file_bytes = *size;
    std::ofstream out(info.dir + "/bench.json", std::ios::trunc);
    out << meta_of(info).dump() << "\n";
    if (!out)
        return fail(errno, "write " + info.dir + "/bench.json");
    return info;
}

}  // namespace smtpfence::bench
