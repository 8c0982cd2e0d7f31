"""
The fleet report's rows (``salt-run envoy.report``): one per minion the target matches, built from
the entry each host published to the mine (``report_summary``) or answered live. A minion with no
entry, a stale one, or no answer is a row that says so, never a gap. Each row gets a health:
red (not answering, or Envoy not LIVE), amber (LIVE but something needs a look: drift, a config
not applied, a failed restart, rejected updates, a failing highstate, discovery, a certificate
close to expiry), green otherwise, with the reasons.
"""

import datetime

STALE_INTERVALS = 3      # an entry older than this many publish intervals is stale
CERT_WARN_S = 14 * 86400
HEALTH_ORDER = {"red": 0, "amber": 1, "green": 2}


def human_duration(seconds):
    """45s, 12m, 3h, 2d: as a person reads an age."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_time(text):
    """ISO 8601 (``Z`` or an offset) to unix seconds; None when absent or unreadable."""
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def as_seconds(value):
    """A time as unix seconds: a number as is, ISO 8601 text (discovery's ``last_check_in``) parsed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return parse_time(value)


def short(sha):
    return sha[:12] if isinstance(sha, str) else None


def reporting(entry, now, answered):
    """(state, age): ``ok``, ``stale``, ``no report``, ``did not answer`` or ``bad entry``."""
    if answered is False:
        return "did not answer", None
    if entry is None:
        return "no report", None
    if not isinstance(entry, dict) or "status" not in entry:
        return "bad entry", None
    age = max(0.0, now - float(entry.get("collected_at") or 0))
    if answered is None and age > STALE_INTERVALS * float(entry.get("interval_s") or 60):
        return "stale", age
    return "ok", age


def _config(status):
    sha = status.get("config_sha256") or {}
    return {"file": short(sha.get("file")), "running": short(sha.get("running")),
            "applied": bool(sha.get("file")) and sha.get("file") == sha.get("running")}


def _last_restart(status):
    last = status.get("last_restart")
    if not last:
        return None
    return {"kind": last.get("kind"), "outcome": last.get("outcome"), "error": last.get("error"),
            "at": last.get("finished_at") or last.get("started_at")}


def _rejected(entry):
    rejected = entry.get("rejected") or {}
    out = [f"{name}: {count} rejected" for name, count in (rejected.get("subscriptions") or {}).items()]
    if rejected.get("inputs"):
        out.append(f"inputs refused at {rejected['inputs'].get('at')}: {rejected['inputs'].get('reason')}")
    return out


def _discovery(entry, now):
    found = entry.get("discovery") or {}
    if not found.get("configured") or "services" not in found:
        return {"error": found["error"]} if found.get("error") else None
    services = found["services"]
    check_ins = [t for t in (as_seconds(s.get("last_check_in")) for s in services) if t is not None]
    return {"registered": sum(1 for s in services if s.get("listed") and s.get("current")), "of": len(services),
            "check_in_age_s": round(now - min(check_ins), 1) if check_ins else None}


def _certificates(entry, now):
    certs = entry.get("certificates")
    if not isinstance(certs, dict) or not certs.get("earliest_expiry"):
        return None
    expiry = parse_time(certs["earliest_expiry"])
    return {"earliest_expiry": certs["earliest_expiry"], "expires_in_s": None if expiry is None else expiry - now}


def _entry_fields(entry, now):
    status = entry.get("status") or {}
    bundle = status.get("bundle") or {}
    drift = entry.get("drift")
    return {
        "live": bool(status.get("live")),
        "state": status.get("state"),
        "bundle": bundle.get("current"),
        "bundle_running": bundle.get("running"),
        "envoy_version": status.get("envoy_version"),
        "epoch": status.get("epoch"),
        "uptime_s": (status.get("uptime_s") or {}).get("current_epoch"),
        "config": _config(status),
        "config_age_s": entry.get("config_age_s"),
        "last_restart": _last_restart(status),
        "highstate": status.get("highstate"),
        "restart_queued": status.get("restart_queued"),
        "rejected": _rejected(entry),
        "discovery": _discovery(entry, now),
        "drift": drift.get("drift") if isinstance(drift, dict) else None,
        "drift_detail": (drift.get("error") or ", ".join(drift.get("files") or [])) if isinstance(drift, dict) else None,
        "certificates": _certificates(entry, now),
        "summary": status.get("summary"),
    }


def problems(row):
    """(health, reasons) of one row."""
    if row["reporting"] != "ok":
        what = {"stale": f"no report for {human_duration(row['age_s'])}"}.get(row["reporting"], row["reporting"])
        return "red", [what]
    red, amber = [], []
    if not row["live"]:
        red.append(f"Envoy not LIVE ({row['state']})")
    if row["certificates"] and row["certificates"]["expires_in_s"] is not None:
        left = row["certificates"]["expires_in_s"]
        if left <= 0:
            red.append("certificate expired")
        elif left < CERT_WARN_S:
            amber.append(f"certificate expires in {human_duration(left)}")
    if row["live"] and not row["config"]["applied"]:
        amber.append("config on disk not running")
    if row["drift"] is True:
        amber.append(f"drift: {row['drift_detail']}")
    elif row["drift"] is None and row["drift_detail"]:
        amber.append(f"inputs do not render: {row['drift_detail']}")
    last = row["last_restart"]
    if last and last["outcome"] in ("failed", "refused"):
        amber.append(f"last restart {last['kind']} {last['outcome']}")
    amber.extend(row["rejected"])
    if row["highstate"] and row["highstate"].get("result") is False:
        amber.append("highstate failing")
    discovery = row["discovery"]
    if discovery and discovery.get("error"):
        amber.append(f"discovery: {discovery['error']}")
    elif discovery and discovery["registered"] < discovery["of"]:
        amber.append(f"discovery: {discovery['registered']} of {discovery['of']} registered")
    if row["restart_queued"]:
        amber.append(row["restart_queued"])
    return ("red" if red else "amber" if amber else "green"), red + amber


def row(minion, entry, now, answered=None):
    """One minion's row; ``answered``: None for a mine entry, True or False for a live ask."""
    state, age = reporting(entry, now, answered)
    out = {"minion": minion, "reporting": state, "age_s": None if age is None else round(age, 1)}
    if state in ("ok", "stale"):
        out.update(_entry_fields(entry, now))
    else:
        out.update(live=None, state=None, bundle=None, bundle_running=None, envoy_version=None, epoch=None,
                   uptime_s=None, config={"file": None, "running": None, "applied": False}, config_age_s=None,
                   last_restart=None, highstate=None, restart_queued=None, rejected=[], discovery=None,
                   drift=None, drift_detail=str(entry)[:300] if state == "bad entry" else None,
                   certificates=None, summary=None)
    out["health"], out["problems"] = problems(out)
    return out


def rows(minions, entries, now, answered=None):
    """Rows for every minion in ``minions`` (and any extra entry), worst health first.
    ``answered``: None (mine), else the set of minions that answered a live ask."""
    names = sorted(set(minions) | set(entries))
    out = [row(name, entries.get(name), now, None if answered is None else name in answered) for name in names]
    return sorted(out, key=lambda r: (HEALTH_ORDER[r["health"]], r["minion"]))


def counts(report_rows):
    out = {"red": 0, "amber": 0, "green": 0}
    for item in report_rows:
        out[item["health"]] += 1
    return out


def _restart_text(last):
    if not last:
        return "-"
    text = f"{last['kind']} {last['outcome']}"
    return text + (f": {last['error']}" if last.get("error") else "")


def _discovery_text(discovery):
    if not discovery:
        return "-"
    if discovery.get("error"):
        return "error"
    text = f"{discovery['registered']}/{discovery['of']}"
    age = discovery.get("check_in_age_s")
    return text + (f" ({human_duration(age)} ago)" if age is not None else "")


def _drift_text(item):
    if item["drift"] is True:
        return "DRIFT"
    if item["drift"] is None:
        return "error" if item["drift_detail"] else "-"
    return "none"


def _config_text(config):
    if not config["file"]:
        return "-"
    return config["file"] if config["applied"] else f"{config['file']} (running {config['running'] or 'none'})"


def _envoy_text(item):
    if item["reporting"] not in ("ok", "stale"):
        return item["reporting"].upper()
    return "LIVE" if item["live"] else (item["state"] or "unknown").upper()


def release(version):
    """The release in Envoy's build version (``<commit>/1.40.0/Clean/RELEASE/BoringSSL``): ``1.40.0``;
    anything else as is. The JSON rows keep the whole string."""
    if not isinstance(version, str) or not version:
        return None
    parts = version.split("/")
    return parts[1] if len(parts) >= 3 and parts[1][:1].isdigit() else version


def display_row(item, with_certificates=False):
    """The row as short strings, for Salt's table outputter and the HTML page."""
    out = {
        "minion": item["minion"],
        "health": item["health"],
        "envoy": _envoy_text(item),
        "age": human_duration(item["age_s"]),
        "bundle": item["bundle"] or "-",
        "version": release(item["envoy_version"]) or "-",
        "epoch": "-" if item["epoch"] is None else str(item["epoch"]),
        "uptime": human_duration(item["uptime_s"]),
        "config": _config_text(item["config"]),
        "config_age": human_duration(item["config_age_s"]),
        "last_restart": _restart_text(item["last_restart"]),
        "rejected": "; ".join(item["rejected"]) or "-",
        "discovery": _discovery_text(item["discovery"]),
        "drift": _drift_text(item),
    }
    if with_certificates:
        certs = item["certificates"]
        out["cert_expiry"] = certs["earliest_expiry"] if certs else "-"
    out["problems"] = "; ".join(item["problems"]) or "-"
    return out


def display_rows(report_rows):
    """Every row as strings; the certificate column only when some host reports certificates."""
    with_certificates = any(item["certificates"] for item in report_rows)
    return [display_row(item, with_certificates) for item in report_rows]
