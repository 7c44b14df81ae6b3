//! The expected tables: the curriculum's oracle, as data. The runner
//! compares every observed row with them; `labs/NN-slug/expected.md` (which
//! the book includes) is generated from them and checked by a unit test.

use super::{Chapter, ChapterResult, Row};

/// One expectation: the row id and the value it must have.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Row id.
    pub id: &'static str,
    /// Expected value (`allowed`, `forbidden`, a username...).
    pub value: &'static str,
}

/// A table row: descriptive cells, then one expectation per phase column.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedRow {
    /// The leading cells (what is checked).
    pub cells: &'static [&'static str],
    /// The expectations, one per remaining column.
    pub expect: &'static [Expect],
}

/// One expected table.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedTable {
    /// Column headers.
    pub columns: &'static [&'static str],
    /// Rows.
    pub rows: &'static [ExpectedRow],
}

const fn e(id: &'static str, value: &'static str) -> Expect {
    Expect { id, value }
}

const fn row(cells: &'static [&'static str], expect: &'static [Expect]) -> ExpectedRow {
    ExpectedRow { cells, expect }
}

static CH01: &[ExpectedTable] = &[ExpectedTable {
    columns: &["check", "expected"],
    rows: &[
        row(
            &["whoami (SelfSubjectReview) from the pod-manager Pod"],
            &[e("identity.whoami", "allowed")],
        ),
        row(
            &["its username"],
            &[e(
                "identity.username",
                "system:serviceaccount:production:pod-manager",
            )],
        ),
        row(
            &["its groups include"],
            &[e(
                "identity.groups",
                "system:serviceaccounts, system:serviceaccounts:production, system:authenticated",
            )],
        ),
        row(
            &["its extra `authentication.kubernetes.io/pod-name`"],
            &[e("identity.pod-name", "identity")],
        ),
        row(
            &["whoami from the Pod without serviceAccountName"],
            &[e(
                "no-sa.username",
                "system:serviceaccount:production:default",
            )],
        ),
        row(
            &["that Pod's stored `spec.serviceAccountName`"],
            &[e("no-sa.spec", "default")],
        ),
        row(
            &["create a Pod naming a ServiceAccount that does not exist"],
            &[e("missing-sa.create", "forbidden")],
        ),
        row(
            &["change `serviceAccountName` of an existing Pod"],
            &[e("change-sa.patch", "invalid")],
        ),
        row(
            &["delete the `default` ServiceAccount"],
            &[e("default-sa.recreated", "recreated")],
        ),
    ],
}];

static CH02: &[ExpectedTable] = &[ExpectedTable {
    columns: &["check", "expected"],
    rows: &[
        row(
            &["files under the mount path"],
            &[e("mount.files", "ca.crt, namespace, token")],
        ),
        row(
            &["the volume admission added"],
            &[e("mount.volume", "kube-api-access-<5 chars>, read-only")],
        ),
        row(
            &["content of `namespace`"],
            &[e("mount.namespace", "production")],
        ),
        row(
            &["JWT claim `sub`"],
            &[e(
                "claims.sub",
                "system:serviceaccount:production:pod-manager",
            )],
        ),
        row(
            &["JWT claim `kubernetes.io.pod.name`"],
            &[e("claims.pod", "token-mount")],
        ),
        row(
            &["JWT claim `aud`"],
            &[e("claims.aud", "contains the API server audience")],
        ),
        row(
            &["`kubernetes.io.warnafter` − `iat` (seconds)"],
            &[e("claims.warnafter", "3607")],
        ),
        row(
            &["`exp` − `iat` (extended expiration)"],
            &[e("claims.exp", "1 year")],
        ),
        row(
            &[
                "raw HTTPS GET `/api/v1/namespaces/production/pods` with the file token and `ca.crt`",
            ],
            &[e("raw-get-pods", "forbidden")],
        ),
        row(
            &["the same GET with a corrupted token"],
            &[e("raw-get-pods-corrupted", "unauthorized")],
        ),
        row(
            &["SelfSubjectReview through kube-rs `Config::incluster()`"],
            &[e("kube-whoami", "allowed")],
        ),
        row(
            &["its username"],
            &[e(
                "kube-whoami.username",
                "system:serviceaccount:production:pod-manager",
            )],
        ),
        row(
            &["a token bound to the Pod, while the Pod exists"],
            &[e("bound-token.live", "allowed")],
        ),
        row(
            &["the same token after the Pod is deleted (within 90 s)"],
            &[e("bound-token.deleted", "unauthorized")],
        ),
    ],
}];

macro_rules! ch3_row {
    ($label:literal, $id:literal, $before:literal, $after:literal) => {
        row(
            &[$label],
            &[
                e(concat!("before.", $id), $before),
                e(concat!("after.", $id), $after),
            ],
        )
    };
}

static CH03: &[ExpectedTable] = &[
    ExpectedTable {
        columns: &["probe (as pod-manager)", "before the RoleBinding", "after"],
        rows: &[
            ch3_row!(
                "list pods in production",
                "list-pods",
                "forbidden",
                "allowed"
            ),
            ch3_row!("get own Pod", "get-own-pod", "forbidden", "allowed"),
            ch3_row!(
                "create a Pod in production (dry run)",
                "create-pod",
                "forbidden",
                "allowed"
            ),
            ch3_row!(
                "delete a Pod in production (dry run)",
                "delete-pod",
                "forbidden",
                "allowed"
            ),
            ch3_row!(
                "get pods/log in production",
                "get-pod-log",
                "forbidden",
                "forbidden"
            ),
            ch3_row!(
                "list secrets in production",
                "list-secrets",
                "forbidden",
                "forbidden"
            ),
            ch3_row!(
                "list deployments.apps in production",
                "list-deployments",
                "forbidden",
                "forbidden"
            ),
            ch3_row!(
                "list pods in staging",
                "list-pods-staging",
                "forbidden",
                "forbidden"
            ),
            ch3_row!(
                "list namespaces (cluster scope)",
                "list-namespaces",
                "forbidden",
                "forbidden"
            ),
            ch3_row!(
                "create a RoleBinding in production (dry run)",
                "create-rolebinding",
                "forbidden",
                "forbidden"
            ),
        ],
    },
    // Phase 3: pod-manager may also create RoleBindings (binding-manager).
    ExpectedTable {
        columns: &[
            "with binding-manager: create a RoleBinding (dry run) to",
            "authorizer (can-i)",
            "the request",
        ],
        rows: &[
            row(
                &["Role `pod-editor` (pod-manager holds all of it)"],
                &[
                    e("escalation.bind-pod-editor.can-i", "allowed"),
                    e("escalation.bind-pod-editor", "allowed"),
                ],
            ),
            row(
                &["ClusterRole `edit` (pod-manager does not hold it)"],
                &[
                    e("escalation.bind-edit.can-i", "allowed"),
                    e("escalation.bind-edit", "forbidden"),
                ],
            ),
        ],
    },
];

static CH04: &[ExpectedTable] = &[ExpectedTable {
    columns: &["probe", "misconfigured", "fixed"],
    rows: &[
        row(
            &["`web` (default SA): list secrets in production"],
            &[
                e("misconfigured.web.list-secrets", "allowed"),
                e("fixed.web.list-secrets", "forbidden"),
            ],
        ),
        row(
            &["dedicated `app` SA: list secrets in production"],
            &[
                e("misconfigured.app.list-secrets", "forbidden"),
                e("fixed.app.list-secrets", "allowed"),
            ],
        ),
        row(
            &["`web`: list pods in production"],
            &[
                e("misconfigured.web.list-pods", "forbidden"),
                e("fixed.web.list-pods", "forbidden"),
            ],
        ),
    ],
}];

static CH05: &[ExpectedTable] = &[
    ExpectedTable {
        columns: &[
            "Pod",
            "ServiceAccount automount",
            "Pod automount",
            "token mounted",
            "in-cluster whoami",
        ],
        rows: &[
            row(
                &["`mount-default`", "unset", "unset"],
                &[
                    e("mount-default.token", "yes"),
                    e("mount-default.incluster", "allowed"),
                ],
            ),
            row(
                &["`mount-pod-off`", "unset", "false"],
                &[
                    e("mount-pod-off.token", "no"),
                    e("mount-pod-off.incluster", "fails: no token"),
                ],
            ),
            row(
                &["`mount-sa-off`", "false", "unset"],
                &[
                    e("mount-sa-off.token", "no"),
                    e("mount-sa-off.incluster", "fails: no token"),
                ],
            ),
            row(
                &["`mount-pod-wins`", "false", "true"],
                &[
                    e("mount-pod-wins.token", "yes"),
                    e("mount-pod-wins.incluster", "allowed"),
                ],
            ),
        ],
    },
    ExpectedTable {
        columns: &[
            "probe from the Pod with automount off (`mount-pod-off`)",
            "expected",
        ],
        rows: &[
            row(&["files at the mount path"], &[e("pod-off.files", "none")]),
            row(
                &["`KUBERNETES_SERVICE_HOST` in its environment"],
                &[e("pod-off.service-env", "set")],
            ),
            row(
                &["anonymous GET `/api/v1/namespaces/production/pods`"],
                &[e("pod-off.anonymous-pods", "forbidden")],
            ),
            row(
                &["anonymous GET `/version`"],
                &[e("pod-off.anonymous-version", "allowed")],
            ),
            row(
                &["explicit projected token, audience `vault`, 600 s, used against the API"],
                &[e("pod-off.vault-token", "unauthorized")],
            ),
        ],
    },
];

/// The expected tables of `chapter`.
pub fn expected_tables(chapter: &Chapter) -> &'static [ExpectedTable] {
    match chapter.number {
        1 => CH01,
        2 => CH02,
        3 => CH03,
        4 => CH04,
        5 => CH05,
        _ => &[],
    }
}

/// `labs/NN-slug/expected.md`: the expected tables as markdown.
pub fn expected_markdown(chapter: &Chapter) -> String {
    let mut out = String::from(
        "<!-- Generated from src/chapters/expected.rs (the runner's oracle); \
         `UPDATE_EXPECTED=1 cargo test -p sa-lab --lib chapters` rewrites it. -->\n",
    );
    for t in expected_tables(chapter) {
        out.push('\n');
        out.push_str(&format!("| {} |\n", t.columns.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(t.columns.len())));
        for r in t.rows {
            let mut cells: Vec<String> = r.cells.iter().map(|c| c.to_string()).collect();
            cells.extend(r.expect.iter().map(|x| format!("`{}`", x.value)));
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    out
}

/// Put the observed rows in expected-table order, with expected values and
/// verdicts; an expected row that was not observed fails.
pub(super) fn compare(chapter: &Chapter, observed: Vec<Row>) -> ChapterResult {
    let mut rows = Vec::new();
    for t in expected_tables(chapter) {
        let phase_cols =
            &t.columns[t.columns.len() - t.rows.first().map_or(0, |r| r.expect.len())..];
        for r in t.rows {
            for (i, x) in r.expect.iter().enumerate() {
                let mut check = r.cells.join(", ").replace('`', "");
                if r.expect.len() > 1 {
                    check = format!("{check} [{}]", phase_cols[i]);
                }
                let mut row = observed
                    .iter()
                    .find(|o| o.id == x.id)
                    .cloned()
                    .unwrap_or_else(|| Row {
                        id: x.id.into(),
                        actual: "not observed".into(),
                        message: "the runner produced no row with this id".into(),
                        ..Row::default()
                    });
                row.check = check;
                row.expected = x.value.into();
                let authorizer_agrees = match row.authorizer.as_deref() {
                    None => true,
                    Some(a) => (a == "allowed") == (row.actual == "allowed"),
                };
                row.pass = row.actual == row.expected && authorizer_agrees;
                rows.push(row);
            }
        }
    }
    ChapterResult {
        number: chapter.number,
        slug: chapter.slug.into(),
        title: chapter.title.into(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_md_files_are_generated_from_the_tables() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for c in super::super::catalog() {
            let path = root.join("labs").join(c.slug).join("expected.md");
            let want = expected_markdown(c);
            if std::env::var_os("UPDATE_EXPECTED").is_some() {
                std::fs::write(&path, &want).unwrap();
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                have,
                want,
                "{} is stale: run UPDATE_EXPECTED=1 cargo test -p sa-lab --lib chapters",
                path.display()
            );
        }
    }

    #[test]
    fn ids_are_unique_and_forbidden_has_an_allowed_twin() {
        for c in super::super::catalog() {
            let all: Vec<&Expect> = expected_tables(c)
                .iter()
                .flat_map(|t| t.rows)
                .flat_map(|r| r.expect)
                .collect();
            let mut ids: Vec<&str> = all.iter().map(|x| x.id).collect();
            ids.sort();
            let n = ids.len();
            ids.dedup();
            assert_eq!(ids.len(), n, "duplicate ids in chapter {}", c.number);
            let forbidden = all.iter().any(|x| x.value == "forbidden");
            let allowed = all.iter().any(|x| x.value == "allowed");
            assert!(
                !forbidden || allowed,
                "chapter {} has no allowed twin",
                c.number
            );
            for t in expected_tables(c) {
                for r in t.rows {
                    assert_eq!(r.cells.len() + r.expect.len(), t.columns.len());
                }
            }
        }
    }

    #[test]
    fn compare_marks_missing_and_disagreeing_rows() {
        let ch = super::super::find("3").unwrap();
        let mut obs = Row {
            id: "before.list-pods".into(),
            check: String::new(),
            subject: "pod-manager".into(),
            verb: "list".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: String::new(),
            namespace: "production".into(),
            name: String::new(),
            expected: String::new(),
            actual: "forbidden".into(),
            status: Some(403),
            message: String::new(),
            authorizer: Some("forbidden".into()),
            pass: false,
        };
        let r = compare(ch, vec![obs.clone()]);
        assert!(r.row("before.list-pods").unwrap().pass);
        assert!(!r.row("after.list-pods").unwrap().pass);
        assert!(!r.passed());
        obs.authorizer = Some("allowed".into());
        let r = compare(ch, vec![obs]);
        assert!(!r.row("before.list-pods").unwrap().pass);
    }
}
