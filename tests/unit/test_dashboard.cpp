// The Grafana dashboard (packaging/grafana/smtpfence-dashboard.json): every panel and
// query has the dashboard's datasource variable, every PromQL expression names only
// metrics smtpfenced writes (docs/metrics.md) or node_exporter's textfile collector
// reports, and every expression parses: promtool cannot read a dashboard, so the
// expressions become recording rules of a temporary rules file that `promtool check
// rules` parses (Grafana's $__ macros replaced by durations first).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tests/support/run.h"
#include "tests/support/temp_dir.h"

namespace smtpfence {
namespace {

using nlohmann::json;
using testing::TempDir;

const std::string kDashboard =
    std::string(SMTPFENCE_SOURCE_DIR) + "/packaging/grafana/smtpfence-dashboard.json";

// The metrics of issue 19's fixed list (what ctl/metrics writes), and node_exporter's
// textfile collector metrics the dashboard and the alert rules read.
const std::set<std::string, std::less<>> kKnownMetrics = {
    "smtpfence_build_info",
    "smtpfence_enforcing",
    "smtpfence_config_error",
    "smtpfence_table_present",
    "smtpfence_table_owned",
    "smtpfence_self_heals_total",
    "smtpfence_self_heal_failures_total",
    "smtpfence_worker_up",
    "smtpfence_worker_restarts_total",
    "smtpfence_queue_waiting",
    "smtpfence_queue_dropped_total",
    "smtpfence_queue_user_dropped_total",
    "smtpfence_attempts_total",
    "smtpfence_attempts_explained_total",
    "smtpfence_allowed_uids",
    "smtpfence_allowed_gids",
    "smtpfence_destination_exceptions",
    "smtpfence_last_apply_duration_seconds",
    "smtpfence_last_apply_timestamp_seconds",
    "node_textfile_mtime_seconds",
    "node_textfile_scrape_error",
};

json load_dashboard() {
    std::ifstream in(kDashboard);
    EXPECT_TRUE(in) << "cannot read " << kDashboard;
    return json::parse(in);
}

bool ident_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
bool ident_char(char c) {
    return ident_start(c) || (c >= '0' && c <= '9');
}

// Index just past the quoted string that starts at i (", ' or `; backslash escapes).
std::size_t skip_string(std::string_view s, std::size_t i) {
    const char quote = s[i++];
    while (i < s.size() && s[i] != quote) {
        i += (s[i] == '\\' && quote != '`') ? 2 : 1;
    }
    return i + 1;
}

// Index just past the bracket group that opens at i ({...}, [...] or (...)), strings
// inside skipped.
std::size_t skip_group(std::string_view s, std::size_t i) {
    const char open = s[i];
    const char close = open == '{' ? '}' : open == '[' ? ']' : ')';
    for (++i; i < s.size() && s[i] != close;) {
        i = (s[i] == '"' || s[i] == '\'' || s[i] == '`') ? skip_string(s, i) : i + 1;
    }
    return i + 1;
}

// The metric names an expression selects: identifiers outside strings, label matchers
// and ranges that are not functions, aggregations, keywords or label lists.
std::set<std::string> metric_names(std::string_view expr) {
    // Operators, and the aggregations (`max by (instance) (x)`: the name comes before its
    // label list, not before its parenthesis).
    static const std::set<std::string, std::less<>> keywords = {
        "and",    "or",     "unless", "offset",       "bool",    "inf",  "nan",
        "Inf",    "NaN",    "sum",    "min",          "max",     "avg",  "group",
        "stddev", "stdvar", "count",  "count_values", "bottomk", "topk", "quantile"};
    static const std::set<std::string, std::less<>> label_lists = {
        "by", "without", "on", "ignoring", "group_left", "group_right"};
    std::set<std::string> names;
    for (std::size_t i = 0; i < expr.size();) {
        const char c = expr[i];
        if (c == '"' || c == '\'' || c == '`') {
            i = skip_string(expr, i);
        } else if (c == '{' || c == '[') {
            i = skip_group(expr, i);
        } else if (c >= '0' && c <= '9') {  // a number or a duration (5m)
            while (i < expr.size() && (ident_char(expr[i]) || expr[i] == '.')) {
                ++i;
            }
        } else if (ident_start(c)) {
            std::size_t end = i;
            while (end < expr.size() && ident_char(expr[end])) {
                ++end;
            }
            const std::string word(expr.substr(i, end - i));
            std::size_t next = end;
            while (next < expr.size() && expr[next] == ' ') {
                ++next;
            }
            const bool call = next < expr.size() && expr[next] == '(';
            if (call && label_lists.contains(word)) {
                end = skip_group(expr, next);
            } else if (!call && !keywords.contains(word) && !label_lists.contains(word)) {
                names.insert(word);
            }
            i = end;
        } else {
            ++i;
        }
    }
    return names;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
    for (auto at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
        s.replace(at, from.size(), to);
    }
}

// Grafana's macros and the dashboard's variables as Grafana would fill them in.
std::string as_promql(std::string expr) {
    replace_all(expr, "$__rate_interval", "5m");
    replace_all(expr, "$__range", "6h");
    replace_all(expr, "$__interval", "1m");
    replace_all(expr, "$instance", ".*");
    return expr;
}

struct Query {
    std::string where;  // "panel 3 (Servers) target B"
    std::string expr;
};

std::vector<Query> queries(const json& dashboard) {
    std::vector<Query> out;
    for (const auto& panel : dashboard.at("panels")) {
        for (const auto& target : panel.value("targets", json::array())) {
            out.push_back({"panel " + std::to_string(panel.at("id").get<int>()) + " (" +
                               panel.at("title").get<std::string>() + ") target " +
                               target.at("refId").get<std::string>(),
                           target.at("expr").get<std::string>()});
        }
    }
    return out;
}

// Runs `promtool check rules` on the expressions as recording rules; its result.
testing::RunResult promtool_parse(const std::vector<Query>& exprs) {
    const TempDir dir;
    const std::string path = dir.path() + "/dashboard-rules.yml";
    std::ofstream out(path);
    out << "groups:\n  - name: dashboard\n    rules:\n";
    for (std::size_t i = 0; i < exprs.size(); ++i) {
        // A JSON string is a YAML double-quoted scalar.
        out << "      - record: dashboard:expr" << i
            << "\n        expr: " << json(as_promql(exprs[i].expr)).dump() << "\n";
    }
    out.close();
    return testing::run(nullptr, {"promtool", "check", "rules", path});
}

TEST(Dashboard, EveryPanelAndQueryHasTheDatasourceVariable) {
    const json dashboard = load_dashboard();
    ASSERT_FALSE(dashboard.at("panels").empty());
    for (const auto& panel : dashboard.at("panels")) {
        const std::string title = panel.at("title").get<std::string>();
        ASSERT_TRUE(panel.contains("datasource")) << title;
        EXPECT_EQ(panel.at("datasource").at("uid"), "${datasource}") << title;
        EXPECT_EQ(panel.at("datasource").at("type"), "prometheus") << title;
        ASSERT_FALSE(panel.value("targets", json::array()).empty()) << title;
        for (const auto& target : panel.at("targets")) {
            EXPECT_EQ(target.at("datasource").at("uid"), "${datasource}") << title;
        }
    }
    std::set<std::string> variables;
    for (const auto& variable : dashboard.at("templating").at("list")) {
        variables.insert(variable.at("name").get<std::string>());
    }
    EXPECT_EQ(variables, (std::set<std::string>{"datasource", "instance"}));
}

TEST(Dashboard, ExpressionsNameOnlyKnownMetricsAndFilterOnTheInstance) {
    const json dashboard = load_dashboard();
    std::set<std::string> used;
    for (const auto& [where, expr] : queries(dashboard)) {
        const auto names = metric_names(as_promql(expr));
        EXPECT_FALSE(names.empty()) << where << ": " << expr;
        for (const auto& name : names) {
            EXPECT_TRUE(kKnownMetrics.contains(name)) << where << ": unknown metric " << name;
            used.insert(name);
        }
        EXPECT_NE(expr.find("instance=~\"$instance\""), std::string::npos)
            << where << " ignores the instance variable: " << expr;
    }
    for (const auto& variable : dashboard.at("templating").at("list")) {
        if (variable.at("type") == "query") {
            const std::string q = variable.at("query").at("query").get<std::string>();
            EXPECT_TRUE(q.starts_with("label_values(smtpfence_build_info,")) << q;
        }
    }
    // What the issue asks the dashboard to show.
    for (const char* name :
         {"smtpfence_enforcing", "smtpfence_config_error", "smtpfence_worker_up",
          "smtpfence_table_owned", "smtpfence_self_heals_total", "smtpfence_attempts_total"}) {
        EXPECT_TRUE(used.contains(name)) << "no panel shows " << name;
    }
}

TEST(Dashboard, MetricNamesTellMetricsFromFunctionsLabelsAndStrings) {
    EXPECT_EQ(metric_names("topk(20, sum by (instance, account) (increase(smtpfence_attempts_total"
                           "{instance=~\"a|b\", x='}'}[6h])))"),
              (std::set<std::string>{"smtpfence_attempts_total"}));
    EXPECT_EQ(metric_names("time() - node_textfile_mtime_seconds offset 5m > 300 unless on "
                           "(instance) up"),
              (std::set<std::string>{"node_textfile_mtime_seconds", "up"}));
    EXPECT_EQ(metric_names("max by (instance) (smtpfence_enforcing) + sum without (uid) "
                           "(smtpfence_attempts_total)"),
              (std::set<std::string>{"smtpfence_enforcing", "smtpfence_attempts_total"}));
    EXPECT_EQ(metric_names("60 * rate(smtpfence_attempt_total[5m])"),
              (std::set<std::string>{"smtpfence_attempt_total"}));
}

TEST(Dashboard, EveryExpressionParses) {
    const json dashboard = load_dashboard();
    const auto exprs = queries(dashboard);
    const auto result = promtool_parse(exprs);
    EXPECT_EQ(result.exit_code, 0) << result.describe();
    EXPECT_NE(result.out.find("SUCCESS: " + std::to_string(exprs.size()) + " rules found"),
              std::string::npos)
        << result.describe();
    for (const auto& [where, expr] : exprs) {
        EXPECT_EQ(as_promql(expr).find('$'), std::string::npos) << where << ": " << expr;
    }
}

// The check above is not vacuous: promtool refuses a broken expression in the same file.
TEST(Dashboard, PromtoolRefusesABrokenExpression) {
    auto exprs = queries(load_dashboard());
    exprs.push_back({"broken", "sum by (instance (smtpfence_enforcing{instance=~\"$instance\"})"});
    const auto result = promtool_parse(exprs);
    EXPECT_NE(result.exit_code, 0) << result.describe();
}

}  // namespace
}  // namespace smtpfence
