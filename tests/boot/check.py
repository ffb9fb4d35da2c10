#!/usr/bin/env python3
"""Checks a boot probe report against what the profiles and the secrets say.

    check.py --report REPORT --profiles DIR --secrets DIR --node NAME
             [--expect-fail a,b] [--disk-bytes N]

Expectations come from the profile YAML (merged like imgbuild merges them:
maps key by key, lists and plain values replace) and from the secrets
directory, computed here with the host's own tools (ssh-keygen, openssl,
sha256), never from imgbuild's output. Prints one line per check, then
"N passed, N failed"; exits 1 when a check fails that is not listed in
--expect-fail (or BOOT_TEST_EXPECT_FAIL), 0 otherwise.
"""

import argparse
import datetime
import fnmatch
import hashlib
import os
import json
import re
import subprocess
import sys

import yaml

BEGIN = "==== IMGBUILD BOOT PROBE BEGIN ===="
END = "==== IMGBUILD BOOT PROBE END ===="


def parse_report(text):
    """Sections of the last complete report in `text`: name -> list of lines."""
    start = text.rfind(BEGIN)
    if start < 0:
        return None
    end = text.find(END, start)
    if end < 0:
        return None
    sections, name = {}, None
    for line in text[start + len(BEGIN):end].replace("\r", "").splitlines():
        if line.startswith("### "):
            name = line[4:].strip()
            sections[name] = []
        elif name is not None:
            sections[name].append(line)
    return sections


def merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    return over


def load_node(profiles, node):
    with open(os.path.join(profiles, "cluster.yaml")) as f:
        c = yaml.safe_load(f)
    with open(os.path.join(profiles, "nodes", node + ".yaml")) as f:
        n = yaml.safe_load(f) or {}
    return c["cluster"], merge(c.get("defaults") or {}, n)


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def fingerprint(pub_path):
    out = subprocess.run(["ssh-keygen", "-lf", pub_path], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def sha256(b):
    return hashlib.sha256(b).hexdigest()


class Checker:
    def __init__(self, expect_fail):
        self.expect_fail = expect_fail
        self.results = []  # (name, ok, detail, evidence)

    def check(self, name, ok, detail, evidence=()):
        self.results.append((name, bool(ok), detail, list(evidence)))

    def finish(self, keep_dir):
        passed = [r for r in self.results if r[1]]
        failed = [r for r in self.results if not r[1]]
        for name, ok, detail, evidence in self.results:
            if ok:
                tag = "XPASS" if name in self.expect_fail else "PASS "
            else:
                tag = "XFAIL" if name in self.expect_fail else "FAIL "
            print(f"{tag} {name}: {detail}")
            if not ok:
                for e in evidence[:15]:
                    print(f"        | {e}")
                if len(evidence) > 15:
                    print(f"        | ... ({len(evidence) - 15} more lines in the report)")
        known = [r[0] for r in failed if r[0] in self.expect_fail]
        unexpected = [r[0] for r in failed if r[0] not in self.expect_fail]
        xpass = [r[0] for r in passed if r[0] in self.expect_fail]
        unknown = sorted(self.expect_fail - {r[0] for r in self.results})
        print()
        print(f"{len(passed)} passed, {len(failed)} failed")
        if known:
            print(f"expected failures (BOOT_TEST_EXPECT_FAIL): {', '.join(known)}")
        if xpass:
            print(f"now passing, remove from BOOT_TEST_EXPECT_FAIL: {', '.join(xpass)}")
        if unknown:
            print(f"BOOT_TEST_EXPECT_FAIL names no such check: {', '.join(unknown)}")
        if unexpected:
            print(f"unexpected failures: {', '.join(unexpected)}")
        if unexpected and keep_dir:
            print(f"serial log, report and disk image kept in {keep_dir}")
        return 1 if unexpected else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", required=True, help="file holding the probe report (or the serial log)")
    ap.add_argument("--serial", help="serial log, used when --report has no complete report")
    ap.add_argument("--profiles", required=True)
    ap.add_argument("--secrets", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--disk-bytes", type=int, help="size of the disk the VM booted from")
    ap.add_argument("--expect-fail", default=os.environ.get("BOOT_TEST_EXPECT_FAIL", ""))
    ap.add_argument("--keep-dir", help="printed when a check fails")
    ap.add_argument("--storage", help="JSON facts the host read off the VM's data disks after it stopped")
    a = ap.parse_args()
    expect_fail = {x.strip() for x in a.expect_fail.split(",") if x.strip()}
    ck = Checker(expect_fail)

    rep = None
    for path in [a.report, a.serial]:
        if path and os.path.exists(path):
            rep = parse_report(read(path, "rb").decode("utf-8", "replace"))
            if rep is not None:
                break
    ck.check("probe_report", rep is not None,
             "the probe's report arrived" if rep is not None else "no complete probe report (the VM did not reach the probe: see the serial log)")
    if rep is None:
        return ck.finish(a.keep_dir)

    def one(name):
        lines = rep.get(name) or [""]
        return lines[0].strip()

    def lines(name):
        return [l for l in rep.get(name, []) if l.strip()]

    cluster, node = load_node(a.profiles, a.node)
    secrets = a.secrets
    nsec = os.path.join(secrets, "nodes", a.node)
    hostname = node.get("hostname", a.node)
    domain = cluster.get("domain")
    k3s = node.get("k3s") or {}
    role = k3s.get("role", "agent")
    net = node.get("network") or {}
    admin = cluster["admin"]["user"]

    # --- boot
    ck.check("boot_finished", one("system-state") == "running",
             f"systemd reached {one('system-state')!r} (want 'running')",
             ["failed units:"] + lines("failed-units") + ["journal errors:"] + lines("journal-errors"))

    # --- identity
    ck.check("hostname", one("hostname") == hostname,
             f"hostname {one('hostname')!r}, profile says {hostname!r}", lines("etc-hostname"))
    if domain:
        fqdn = f"{hostname}.{domain}"
        ck.check("fqdn", one("fqdn") == fqdn, f"hostname -f {one('fqdn')!r}, expected {fqdn!r}", lines("etc-hosts"))
    mid = one("machine-id")
    ck.check("machine_id", re.fullmatch(r"[0-9a-f]{32}", mid) is not None,
             f"/etc/machine-id {mid!r} (systemd should generate it on first boot from the empty file)")
    tz = cluster.get("timezone", "Etc/UTC")
    ck.check("timezone", one("timezone").endswith("/" + tz),
             f"/etc/localtime -> {one('timezone')!r}, profile says {tz}")

    # --- admin user and its keys
    users = {l.split(":")[0]: l.split(":") for l in lines("users")}
    u = users.get(admin)
    groups = one(f"user-groups {admin}").split()
    ck.check("admin_user", u is not None and u[6] == "/bin/bash" and "sudo" in groups,
             f"user {admin}: " + (f"shell {u[6]}, groups {' '.join(groups)}" if u else "missing"),
             lines("users"))
    want_keys = [k.strip() for k in cluster["admin"].get("ssh_authorized_keys", [])]
    got_keys = [l.strip() for l in lines(f"authorized_keys {admin}")]
    ck.check("admin_authorized_keys", got_keys == want_keys,
             f"~{admin}/.ssh/authorized_keys has {len(got_keys)} line(s), profile has {len(want_keys)}"
             + ("" if got_keys == want_keys else "; they differ"),
             ["want: " + k for k in want_keys] + ["got:  " + k for k in got_keys])

    # --- SSH host identity
    pub_path = os.path.join(nsec, "ssh_host_ed25519_key.pub")
    want_fp = fingerprint(pub_path)
    got_fps = [l for l in lines("ssh-host-key-fingerprints") if "ED25519" in l]
    got_fp = got_fps[0].split()[1] if got_fps else ""
    ck.check("ssh_host_key_fingerprint", got_fp == want_fp,
             f"booted ed25519 {got_fp or 'none'}, secrets {want_fp}", lines("ssh-host-key-fingerprints"))
    served = lines("ssh-served-ed25519")
    served_fp = served[0].split()[1] if served and len(served[0].split()) > 1 else ""
    ck.check("ssh_host_key_served", served_fp == want_fp,
             f"sshd serves {served_fp or 'nothing'}, secrets {want_fp}", served)
    want_pub = read(pub_path).strip()
    got_pub = lines("ssh-host-ed25519-pub")
    derived = one("ssh-host-ed25519-derived").split()
    fields = got_pub[0].split() if got_pub else []
    pub_ok = (len(got_pub) == 1 and len(fields) == 3 and fields[:2] == derived[:2]
              and got_pub[0].strip() == want_pub and len(want_pub.split()) == 3)
    ck.check("ssh_host_pubkey_file", pub_ok,
             "/etc/ssh/ssh_host_ed25519_key.pub is one 'type key comment' line matching the private key and the secrets"
             if pub_ok else
             f"/etc/ssh/ssh_host_ed25519_key.pub has {len(got_pub)} line(s), {len(fields)} field(s); "
             f"matches private key: {fields[:2] == derived[:2]}; equals secrets file: {bool(got_pub) and got_pub[0].strip() == want_pub}",
             ["booted:  " + l for l in got_pub] + ["secrets: " + want_pub, "derived: " + " ".join(derived)])
    files = lines("ssh-host-key-files")
    others = [f for f in files if not f.startswith("ssh_host_ed25519_key")]
    ck.check("ssh_no_other_host_keys", not others,
             "only the baked ed25519 host key in /etc/ssh" if not others
             else f"other host keys in /etc/ssh: {' '.join(others)} (the base image's, not the node's)",
             lines("ssh-host-key-fingerprints"))

    # --- k3s node password
    pw = read(os.path.join(nsec, "node-password"), "rb")
    got = one("node-password-sha256")
    ok_exact, ok_strip = got == sha256(pw), got == sha256(pw.strip())
    ck.check("node_password", ok_exact or ok_strip,
             f"/etc/rancher/node/password sha256 {got[:16]}..., secrets {sha256(pw)[:16]}..."
             + (" (same bytes)" if ok_exact else " (same password, whitespace trimmed)" if ok_strip else " (different)"),
             lines("node-password-stat"))

    # --- cloud-init
    st = lines("cloud-init-status")
    status = next((l.split(":", 1)[1].strip() for l in st if l.startswith("status:")), "")
    ck.check("cloud_init_done", status == "done" and "exit: 0" in st,
             f"cloud-init status {status!r}", st + lines("cloud-init-result"))
    problems = lines("cloud-init-log-problems")
    ck.check("cloud_init_log_clean", not problems,
             "no WARNING/ERROR in /var/log/cloud-init.log" if not problems
             else f"{len(problems)} WARNING/ERROR line(s) in /var/log/cloud-init.log", problems)
    iid = one("cloud-init-instance-id")
    seed_iid = next((l.split(":", 1)[1].strip().strip("'\"") for l in lines("seed-meta-data")
                     if l.startswith("instance-id:")), "")
    stock = lines("stock-seed-references")
    ck.check("stock_seed_gone", iid and iid != "cloud-image" and iid == seed_iid and not stock,
             f"instance-id in use {iid!r}, seed says {seed_iid!r}", stock + lines("cloud-init-datasource"))

    # --- k3s
    unit = "k3s" if role == "server" else "k3s-agent"
    ck.check("k3s_unit", one("k3s-unit") == unit, f"k3s unit {one('k3s-unit')!r}, role {role} wants {unit}")
    ck.check("k3s_enabled", one("k3s-is-enabled") == "enabled", f"{unit} is {one('k3s-is-enabled')!r}")
    ck.check("k3s_active", one("k3s-is-active") == "active", f"{unit} is {one('k3s-is-active')!r}",
             lines("k3s-show"))
    starts = int(one("k3s-starts") or 0)
    ck.check("k3s_started_once", starts == 1, f"k3s started {starts} time(s)", lines("k3s-show"))
    log = lines("k3s-standin-log")
    first = []
    for l in log:
        if l.startswith("=== end"):
            break
        first.append(l)

    def field(prefix, block=first):
        return next((l[len(prefix):].strip() for l in block if l.startswith(prefix)), None)

    h0 = field("hostname:")
    ck.check("k3s_hostname_at_start", h0 == hostname,
             f"hostname when k3s first started: {h0!r} (want {hostname!r}; k3s registers under it)",
             [l for l in first if l.startswith(("hostname", "etc_hostname", "uptime", "cloud-"))])
    ci = field("cloud-init.service:") or ""
    ci_done = ci.split()[:1] == ["active"] and ci.split()[-1] not in ("", "0")
    ck.check("k3s_after_cloud_init", ci_done,
             f"cloud-init.service when k3s first started: {ci!r}",
             [l for l in first if l.startswith(("uptime", "cloud-"))])
    # First-boot configuration (cloud-config, cloud-final: packages, runcmd, the
    # NVIDIA toolkit on GPU nodes) should be in place before k3s starts.
    cf = field("cloud-final.service:") or ""
    cf_done = cf.split()[:1] == ["active"] and cf.split()[-1] not in ("", "0")
    ck.check("k3s_after_cloud_final", cf_done,
             f"cloud-final.service when k3s first started: {cf!r} (packages and runcmd of the first boot "
             + ("were done)" if cf_done else "came after k3s had started)"),
             [l for l in first if l.startswith(("uptime", "cloud-"))] + ["cloud-init stages (monotonic us):"]
             + lines("cloud-init-units"))
    args = field("args:")
    ck.check("k3s_args", args == ("server" if role == "server" else "agent"), f"k3s started with {args!r}")

    # The configuration k3s would read, as the stand-in saw it.
    conf, cur = {}, None
    for l in first:
        m = re.match(r"--- (\S+) \((\d+) (\S+)\)", l)
        if m:
            cur = m.group(1)
            conf[cur] = {"mode": m.group(2), "owner": m.group(3), "lines": []}
        elif cur and l.startswith(("images:", "node-password:")):
            cur = None
        elif cur:
            conf[cur]["lines"].append(l)
    merged = {}
    for path in sorted(conf, key=lambda p: (p != "/etc/rancher/k3s/config.yaml", p)):
        try:
            d = yaml.safe_load("\n".join(conf[path]["lines"])) or {}
        except yaml.YAMLError:
            d = {"__unparsable__": path}
        for k, v in d.items():
            if k.endswith("+"):
                merged[k[:-1]] = (merged.get(k[:-1]) or []) + (v if isinstance(v, list) else [v])
            else:
                merged[k] = v
    tls = os.path.join(secrets, "cluster", "tls", "server-ca.crt")
    ca_hash = sha256(read(tls, "rb"))
    agent_pw = read(os.path.join(secrets, "cluster", "agent-token")).strip()
    server_pw = read(os.path.join(secrets, "cluster", "token")).strip()
    want = {"node-name": hostname}
    if k3s.get("node_ip"):
        want["node-ip"] = k3s["node_ip"]
    if k3s.get("flannel_iface"):
        want["flannel-iface"] = k3s["flannel_iface"]
    if role == "agent":
        want["server"] = f"https://{cluster['server']}:6443"
        want["token"] = f"<sha256 {sha256(f'K10{ca_hash}::node:{agent_pw}'.encode())}>"
    elif not k3s.get("cluster_init"):
        want["server"] = f"https://{cluster['server']}:6443"
        want["token"] = f"<sha256 {sha256(f'K10{ca_hash}::server:{server_pw}'.encode())}>"
    else:
        want["cluster-init"] = True
        want["token"] = f"<sha256 {sha256(f'K10{ca_hash}::server:{server_pw}'.encode())}>"
    for key, value in (k3s.get("labels") or {}).items():
        want.setdefault("node-label", []).append(f"{key}={value}")
    wrong = {k: (merged.get(k), v) for k, v in want.items()
             if (sorted(merged.get(k) or []) != sorted(v) if isinstance(v, list) else str(merged.get(k)) != str(v))}
    loose = [p for p, c in conf.items() if c["mode"] != "600" or c["owner"] != "root:root"]
    ck.check("k3s_config", conf and not wrong and not loose,
             f"k3s would read {len(conf)} config file(s)"
             + (f"; wrong or missing: {', '.join(sorted(wrong))}" if wrong else "; keys as the profile and secrets say")
             + (f"; not 0600 root: {', '.join(loose)}" if loose else ""),
             [f"{k}: got {g!r}, want {w!r}" for k, (g, w) in sorted(wrong.items())]
             + [f"{p} {c['mode']} {c['owner']}" for p, c in conf.items()])
    images = field("images:") or ""
    ck.check("k3s_airgap_images", "k3s-airgap-images-" in images,
             f"/var/lib/rancher/k3s/agent/images: {images!r}")
    # The clock when k3s started must be inside the cluster CA's validity, or
    # every TLS handshake fails (shared/REFERENCE.md §6).
    nb = subprocess.run(["openssl", "x509", "-noout", "-startdate", "-in", tls],
                        capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
    not_before = datetime.datetime.strptime(nb, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.timezone.utc)
    d0 = field("date:")
    try:
        started = datetime.datetime.strptime(d0, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        ck.check("k3s_clock_after_ca", started >= not_before,
                 f"clock at k3s start {d0}, cluster CA valid from {not_before:%Y-%m-%dT%H:%M:%SZ}")
    except (TypeError, ValueError):
        ck.check("k3s_clock_after_ca", False, f"no start time in the stand-in's log ({d0!r})")

    # --- network
    links = lines("net-links")
    addrs = lines("net-addr")
    routes = lines("net-route")
    if net.get("dhcp", not net.get("address")) and not net.get("address"):
        ck.check("net_up", any(l.split()[1] == "UP" for l in addrs if not l.startswith("lo ")),
                 "a DHCP interface is up", addrs)
    else:
        match = (net.get("match") or {}).get("name") or "*"
        names = [l.split()[0].split("@")[0] for l in links]
        matching = [n for n in names if fnmatch.fnmatchcase(n, match) and n != "lo"]
        ck.check("net_interface", bool(matching),
                 f"interface matching {match!r}: " + (" ".join(matching) if matching else "none"), links)
        addr = net.get("address")
        have = [l for l in addrs if addr in l.split()[2:]]
        ck.check("net_static_address", bool(have) and have[0].split()[0] in matching,
                 f"{addr} " + (f"on {have[0].split()[0]}" if have else "not configured"),
                 addrs + ["--- networkd files:"] + lines("networkd-files"))
        gw = net.get("gateway")
        if gw:
            ok = any(l.startswith(f"default via {gw} ") for l in routes)
            ck.check("net_default_route", ok, f"default route via {gw} " + ("present" if ok else "missing"), routes)
        dns = net.get("dns") or cluster.get("dns") or []
        if dns:
            nd = lines("networkd-files")
            missing = [d for d in dns if not any(re.match(rf"DNS={re.escape(d)}\b", l) for l in nd)]
            ck.check("net_dns", not missing, f"DNS {' '.join(dns)} " + ("in the networkd config" if not missing
                                                                      else f"missing: {' '.join(missing)}"),
                     nd + ["--- resolvectl dns:"] + lines("resolvectl-dns"))
        if domain:
            ok = any(re.match(rf"Domains=.*\b{re.escape(domain)}\b", l) for l in lines("networkd-files"))
            ck.check("net_search_domain", ok, f"search domain {domain} " + ("in the networkd config" if ok else "missing"),
                     lines("networkd-files") + ["--- resolvectl domain:"] + lines("resolvectl-domain"))

    # --- disk
    part = int(one("root-part-bytes") or 0)
    fsb = int(one("root-fs-bytes") or 0)
    disk = int(one("disk-bytes") or 0)
    # growpart leaves at most the GPT backup (33 sectors) and alignment (1 MiB) unused.
    start = int(one("root-part-start-sector") or 0) * 512
    end = start + part
    grown = disk > 0 and part > 0 and start > 0 and end >= disk - 2 * 1024 * 1024
    ck.check("root_partition_grown", grown,
             f"root partition {part / 2**30:.2f} GiB ending {(disk - end) / 2**20:.2f} MiB before the end of the "
             f"{disk / 2**30:.2f} GiB disk", lines("block-devices"))
    ck.check("root_fs_grown", part > 0 and fsb >= 0.9 * part,
             f"root file system {fsb / 2**30:.2f} GiB in a {part / 2**30:.2f} GiB partition", lines("root-device"))

    # --- swap
    sw = node.get("swap") or {}
    if sw.get("file_mib"):
        want_bytes = sw["file_mib"] * 1024 * 1024
        got = [l.split() for l in lines("swap")]
        ok = any(g[0] == "/swapfile" and int(g[2]) >= want_bytes - 4096 * 2 for g in got if len(g) >= 3)
        ck.check("swap_file", ok, f"swap: {lines('swap') or 'none'} (want /swapfile of {sw['file_mib']} MiB)")
    if sw.get("swappiness") is not None:
        ck.check("swappiness", one("swappiness") == str(sw["swappiness"]),
                 f"vm.swappiness {one('swappiness')}, profile says {sw['swappiness']}")

    # --- data disks (storage): a blank disk formatted, filled and mounted
    # before k3s; disks holding anything (a file system, a partition without
    # one, data that is not zeros) never written to.
    disks = node.get("storage") or []
    if disks:
        facts = {}
        if a.storage and os.path.exists(a.storage):
            with open(a.storage) as f:
                facts = json.load(f)
        ck.check("storage_facts", bool(facts), "the host read the data disks after the VM stopped"
                 if facts else "no facts about the data disks (--storage missing)")
        mounts = {l.split()[0]: l.split() for l in lines("data-mounts")}
        props = lambda name: dict(l.split("=", 1) for l in lines(name) if "=" in l)
        for d in disks:
            mp = d["mount"]
            label = d.get("label") or mp.rstrip("/").rsplit("/", 1)[-1][:16]
            fact = facts.get(d["device"], {})
            role = fact.get("role")
            if role == "blank":
                m = mounts.get(mp)
                ck.check("storage_blank_mounted", m is not None and m[2] == d.get("fs", "ext4") and m[-1] == label,
                         f"{mp}: " + (" ".join(m[1:]) if m else "not mounted") + f" (want {d.get('fs', 'ext4')} labelled {label})",
                         lines("data-mounts") + lines("data-disks"))
                ck.check("storage_blank_formatted", fact.get("table") == "gpt" and fact.get("label") == label
                         and fact.get("fsck") == 0 and fact.get("partlabel") == f"imgbuild-{label}",
                         f"blank disk now: table {fact.get('table')}, partition 1 {fact.get('partlabel')!r} "
                         f"{fact.get('fstype')} labelled {fact.get('label')!r}, e2fsck -fn exit {fact.get('fsck')}",
                         fact.get("evidence", []))
                fill = props("storage-fill-result")
                k3s = props("k3s-show")
                fill_t = int(fill.get("ActiveEnterTimestampMonotonic") or 0)
                k3s_t = int(k3s.get("ExecMainStartTimestampMonotonic") or 0)
                filled = "k3s" in fact.get("root_entries", []) and any("airgap" in l for l in lines("rancher-on-disk"))
                ck.check("storage_filled_before_k3s", filled and fill.get("Result") == "success" and 0 < fill_t < k3s_t,
                         f"new disk holds {fact.get('root_entries')}; fill done at {fill_t} us, k3s started at {k3s_t} us; "
                         f"air-gap images seen by k3s: {lines('rancher-on-disk')}",
                         lines("storage-fill") + lines("storage-fill-result") + lines("k3s-show"))
            elif role in ("used", "opaque-table", "opaque-raw"):
                same = fact.get("sha256_before") == fact.get("sha256_after")
                ck.check(f"storage_{role.replace('-', '_')}_untouched", same and mp not in mounts,
                         f"{fact.get('what')}: sha256 {'unchanged' if same else 'CHANGED'}, "
                         f"{mp} {'mounted' if mp in mounts else 'not mounted'}",
                         lines("data-mounts") + lines("storage-prepare"))
            else:
                ck.check("storage_facts", False, f"no facts for {d['device']}")

    ck.check("no_failed_units", not lines("failed-units"),
             "no failed units" if not lines("failed-units") else "failed units: "
             + " ".join(l.split()[0] for l in lines("failed-units")), lines("failed-units"))
    return ck.finish(a.keep_dir)


if __name__ == "__main__":
    sys.exit(main())
