//! The seccomp filter seen from inside a container: other ABIs (x32, i386) and unknown
//! syscall numbers are refused by the filter, told from the kernel's own answer by the errno
//! (this kernel answers ENOSYS to x32 and to unassigned numbers, EPERM never); Docker's
//! argument rules hold; and a workload of busybox utilities Docker's profile allows runs
//! unaffected.

mod common;

use std::collections::HashMap;

use common::TestRuntime;

fn parse(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

const CALLS: &str = "x32_unshare_user x32_getpid i386_getpid unknown_hole unknown_new \
    personality_query personality_rx socket_inet socket_vsock socket_alg keyctl bpf";

/// What the kernel answers without the filter, for comparison: none of the refusals the
/// test below expects from the filter can come from the kernel.
fn outside() -> HashMap<String, String> {
    let tmp = tempfile::tempdir().unwrap();
    let layer = common::busybox_layer(tmp.path());
    let probe = layer.join("bin/probe");
    parse(&common::run(
        std::process::Command::new(probe).args(CALLS.split_whitespace()),
    ))
}

#[tokio::test]
async fn other_abis_and_unknown_numbers_are_refused_by_the_filter() {
    let host = outside();
    // This kernel: x32 off (ENOSYS), ia32 on, unassigned numbers ENOSYS, vsock present.
    assert_ne!(host["x32_unshare_user"], "EPERM", "{host:?}");
    assert_ne!(host["x32_getpid"], "EPERM", "{host:?}");
    assert_eq!(host["i386_getpid"], "ok", "{host:?}");
    assert_eq!(host["unknown_hole"], "ENOSYS", "{host:?}");
    assert_eq!(host["unknown_new"], "ENOSYS", "{host:?}");
    assert_ne!(host["socket_vsock"], "EPERM", "{host:?}");
    assert_ne!(host["socket_alg"], "EPERM", "{host:?}");
    assert_eq!(host["personality_rx"], "ok", "{host:?}");

    let t = TestRuntime::new();
    let script = format!(
        "exec > /tmp/out 2>&1; grep '^Seccomp:' /proc/self/status | tr -d ' \\t' | sed 's/:/=/'; \
         /bin/probe {CALLS}"
    );
    let (exit, out, running) = t.run(&t.spec("sc1", &script)).await;
    assert_eq!(exit.code, 0, "{out}");
    let kv = parse(&out);
    assert_eq!(kv["Seccomp"], "2", "filter mode: {out}");
    for call in [
        "x32_unshare_user",
        "x32_getpid",
        "i386_getpid",
        "unknown_hole",
        "personality_rx",
        "socket_vsock",
        "socket_alg",
        "keyctl",
        "bpf",
    ] {
        assert_eq!(
            kv[call], "EPERM",
            "{call} must be refused by the filter: {out}"
        );
    }
    // Newer than every syscall the filter knows: ENOSYS, so libc falls back (as runc).
    assert_eq!(kv["unknown_new"], "ENOSYS", "{out}");
    assert_eq!(kv["personality_query"], "ok", "{out}");
    assert_eq!(kv["socket_inet"], "ok", "{out}");
    running.delete().await;
}

/// Everyday busybox utilities, an HTTP server and client, and a DNS query: none may meet the
/// filter (no "Operation not permitted" or "Function not implemented"). A container without
/// a network has its loopback down, so the client's and the query's connect get the kernel's
/// ENETUNREACH, which they can only get once socket and connect passed the filter (the e2e
/// suites run the same utilities over a real network).
const WORKLOAD: &str = r#"exec > /tmp/out 2>&1
set -e
echo date=$(date -u +%Y)
ls / > /tmp/ls; echo ls=$(grep -c . /tmp/ls)
echo hello > /tmp/f; echo cat=$(cat /tmp/f)
sleep 0.1; echo slept=1
ps -o pid,comm > /tmp/ps; echo ps=$(grep -c sh /tmp/ps)
mkdir -p /tmp/www; echo served > /tmp/www/index.html
httpd -p 127.0.0.1:8080 -h /tmp/www; echo httpd=$(pidof httpd | wc -w)
printf 'GET /index.html HTTP/1.0\r\n\r\n' | httpd -i -h /tmp/www > /tmp/inetd; echo inetd=$(grep -c served /tmp/inetd)
wget -q -O /tmp/got http://127.0.0.1:8080/index.html 2> /tmp/wget || true
echo wget=$(grep -c 'Network is unreachable' /tmp/wget)
cat /tmp/wget
nslookup -timeout=1 example.test 127.0.0.1 > /tmp/ns 2>&1 || true
echo nslookup_lines=$(grep -c . /tmp/ns)
cat /tmp/ns
sh -c 'exit 3' || echo subshell=$?
echo done=1
"#;

#[tokio::test]
async fn busybox_workload_runs_under_the_filter() {
    let t = TestRuntime::new();
    let (exit, out, running) = t.run(&t.spec("sc2", WORKLOAD)).await;
    assert_eq!(exit.code, 0, "{out}");
    let kv = parse(&out);
    assert_eq!(kv["done"], "1", "{out}");
    assert!(kv["date"].parse::<u32>().unwrap() >= 2024, "{out}");
    assert!(kv["ls"].parse::<u32>().unwrap() > 5, "{out}");
    assert_eq!(kv["cat"], "hello");
    assert!(kv["ps"].parse::<u32>().unwrap() >= 1, "{out}");
    assert_eq!(kv["httpd"], "1", "httpd bound and listens: {out}");
    assert_eq!(kv["inetd"], "1", "httpd answered a request: {out}");
    assert_eq!(
        kv["wget"], "1",
        "the kernel, not the filter, answered: {out}"
    );
    assert_eq!(kv["subshell"], "3", "{out}");
    assert!(
        kv["nslookup_lines"].parse::<u32>().unwrap() > 0,
        "nslookup ran: {out}"
    );
    for refusal in ["Operation not permitted", "Function not implemented"] {
        assert!(!out.contains(refusal), "{refusal}: {out}");
    }
    running.delete().await;
}
