"""
What the generator accepts: the service manifest, the network team's pillar sections and the
host facts the Salt module passes. Defaults here are the network team's built-in ones; pillar
``envoy:defaults`` overrides them field by field. docs/manifest.md and pillar.example describe
the same fields for people.
"""

from envoy_formula import mesh_names

from .schema import (
    Bool,
    DictOf,
    Field,
    HostPort,
    Int,
    IPv4,
    ListOf,
    Map,
    Number,
    OneOrList,
    Port,
    Str,
    tunable_paths,
)

NAME = Str(r"[a-z][a-z0-9_-]{0,62}", shape="a name of lowercase letters, digits, '-' and '_' (max 63)")
ABS_PATH = Str(r"/[^\x00\n]*", shape="an absolute path")
URL_PATH = Str(r"/[^\s]*", shape="a URL path starting with /")
DOMAIN = Str(r"\*|(\*[.-])?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?",
             shape="a domain such as www.example.com, *.example.com or *")
# gRPC's full service name as its health protocol knows it (package.Service), e.g. grpc.health.v1.Health.
GRPC_SERVICE = Str(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*",
                   shape="a full gRPC service name such as pricing.v1.Pricing", max_len=255)
MS = 3_600_000  # an hour: the hard ceiling of any timeout, whatever the pillar says


def ms(minimum=1, tunable=False):
    return Int(minimum, MS, tunable=tunable)


def count(tunable=False):
    return Int(1, 1_000_000, tunable=tunable)


# --- the service manifest ---------------------------------------------------------------------

UPSTREAM_BREAKERS = Map({
    "max_connections": Field(count(tunable=True)),
    "max_pending_requests": Field(count(tunable=True)),
    "max_requests": Field(count(tunable=True)),
    "max_retries": Field(Int(0, 1_000_000, tunable=True)),
})
INGRESS_BREAKERS = Map({
    "max_connections": Field(count(tunable=True)),
    "max_pending_requests": Field(count(tunable=True)),
    "max_requests": Field(count(tunable=True)),
})

MANIFEST = Map({
    "service": Field(NAME, required=True),
    "ingress": Field(Map({
        "port": Field(Port(), required=True),
        "app_port": Field(Port(), required=True),
        # What the local app speaks: http (HTTP/1.1) or http2 (h2c: a gRPC server).
        "app_protocol": Field(Str(choices=["http", "http2"]), default="http"),
        "health_check": Field(URL_PATH, default="/healthcheck"),
        "timeout_ms": Field(ms(tunable=True)),
        "max_stream_duration_ms": Field(ms(tunable=True)),
        "stream_idle_timeout_ms": Field(ms(tunable=True)),
        "circuit_breakers": Field(INGRESS_BREAKERS),
    })),
    "upstreams": Field(ListOf(Map({
        "service": Field(NAME, required=True),
        "timeout_ms": Field(ms(tunable=True)),
        "per_try_timeout_ms": Field(ms(tunable=True)),
        "max_stream_duration_ms": Field(ms(tunable=True)),
        "stream_idle_timeout_ms": Field(ms(tunable=True)),
        "connect_timeout_ms": Field(ms(tunable=True)),
        "retries": Field(Int(0, 10, tunable=True)),
        "circuit_breakers": Field(UPSTREAM_BREAKERS),
    }))),
    "databases": Field(ListOf(Map({
        "name": Field(NAME, required=True),
        "type": Field(Str(choices=["mongo", "tcp"])),
        "listen_port": Field(Port(), required=True),
        "max_connections": Field(count(tunable=True)),
        "connect_timeout_ms": Field(ms(tunable=True)),
        "rate_limit": Field(Map({"connections_per_second": Field(count(tunable=True))})),
    }))),
    "caches": Field(ListOf(Map({
        "name": Field(NAME, required=True),
        "type": Field(Str(choices=["redis"])),
        "listen_port": Field(Port(), required=True),
        "op_timeout_ms": Field(ms(tunable=True)),
    }))),
})
MANIFEST_SECTIONS = ("ingress", "upstreams", "databases", "caches")
# The knobs of a long-lived stream (gRPC streaming, long polls, server-sent events): the route
# timeout covers a whole response, so a stream takes these instead (docs/manifest.md, Streams).
STREAM_KNOBS = ("max_stream_duration_ms", "stream_idle_timeout_ms")


# --- the network team's pillar ------------------------------------------------------------------

def bounds_spec(spec):
    """The ``envoy:overridable`` shape for one manifest section: its tunables, each {min, max}."""
    tree = {}
    for path in tunable_paths(spec):
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = None
    return _bounds_map(tree)


def _bounds_map(tree):
    fields = {}
    for name, sub in tree.items():
        if sub is None:
            fields[name] = Field(Map({"min": Field(Int(0, None), required=True),
                                      "max": Field(Int(0, None), required=True)}))
        else:
            fields[name] = Field(_bounds_map(sub))
    return Map(fields)


def _section(name):
    return MANIFEST.fields[name].spec


OVERRIDABLE = Map({name: Field(bounds_spec(_section(name))) for name in MANIFEST_SECTIONS})

# Which manifest knobs a service may turn, and how far, when the pillar says nothing.
BUILTIN_OVERRIDABLE = {
    "ingress": {"timeout_ms": {"min": 100, "max": 60000},
                "max_stream_duration_ms": {"min": 1000, "max": 3_600_000},
                "stream_idle_timeout_ms": {"min": 1000, "max": 3_600_000},
                "circuit_breakers": {"max_requests": {"min": 1, "max": 10000}}},
    "upstreams": {"timeout_ms": {"min": 10, "max": 60000},
                  "per_try_timeout_ms": {"min": 10, "max": 60000},
                  "max_stream_duration_ms": {"min": 1000, "max": 3_600_000},
                  "stream_idle_timeout_ms": {"min": 1000, "max": 3_600_000},
                  "retries": {"min": 0, "max": 3},
                  "circuit_breakers": {"max_requests": {"min": 1, "max": 10000}}},
    "databases": {"max_connections": {"min": 1, "max": 1000},
                  "rate_limit": {"connections_per_second": {"min": 1, "max": 10000}}},
    "caches": {"op_timeout_ms": {"min": 1, "max": 10000}},
}

HEALTH_CHECK = Map({
    "enabled": Field(Bool(), default=True),
    "path": Field(URL_PATH, default="/healthcheck"),
    "timeout_ms": Field(ms(), default=2000),
    "interval_ms": Field(ms(), default=5000),
    # While a cluster has had no traffic: hosts not (yet) healthy are checked every
    # no_traffic_interval_ms, so a host whose first check came before it listened (a fleet converging
    # at once, a front whose upstream is its own sidecar) is found within seconds, not Envoy's 60 s;
    # healthy hosts only every no_traffic_healthy_interval_ms, which keeps idle mesh clusters quiet.
    "no_traffic_interval_ms": Field(ms(), default=5000),
    "no_traffic_healthy_interval_ms": Field(ms(), default=60000),
    "unhealthy_threshold": Field(Int(1, 100), default=2),
    "healthy_threshold": Field(Int(1, 100), default=2),
})
OUTLIER_DETECTION = Map({
    "enabled": Field(Bool(), default=True),
    "consecutive_5xx": Field(Int(1, 1000), default=5),
    "interval_ms": Field(ms(), default=10000),
    "base_ejection_time_ms": Field(ms(), default=30000),
    # Envoy's 10 % allows ejecting one host of a small cluster at most; half of it may go while the
    # rest can take the load (Envoy's panic threshold, 50 %, is the same line).
    "max_ejection_percent": Field(Int(0, 100), default=50),
})
LB_POLICIES = ["round_robin", "least_request", "random"]

DEFAULTS = Map({
    "upstreams": Field(Map({
        "connect_timeout_ms": Field(ms(), default=250),
        "timeout_ms": Field(ms(), default=15000),
        "per_try_timeout_ms": Field(ms()),
        "retries": Field(Int(0, 10), default=1),
        "retry_on": Field(Str(r"[a-z0-9-]+(,[a-z0-9-]+)*", shape="a comma-separated list of Envoy retry "
                              "conditions such as 5xx,connect-failure"), default="5xx,connect-failure,refused-stream"),
        "lb_policy": Field(Str(choices=LB_POLICIES), default="least_request"),
        "circuit_breakers": Field(Map({
            "max_connections": Field(count(), default=1024),
            "max_pending_requests": Field(count(), default=1024),
            "max_requests": Field(count(), default=1024),
            # Envoy's own default, 3 concurrent retries per cluster, fails requests at once (UO)
            # while a dead host is still in rotation; retries never outnumber the requests they
            # retry (retries is at most a few per request), so the same bound as max_requests.
            "max_retries": Field(Int(0, 1_000_000), default=1024),
        }), default={}),
        "outlier_detection": Field(OUTLIER_DETECTION, default={}),
        "health_check": Field(HEALTH_CHECK, default={}),
        # How often Envoy polls the discovery service for an eds service's endpoints. Envoy adds
        # its own jitter of up to one more interval: 20 s polls every 20-40 s, about 30 s on
        # average, spread across the fleet.
        "eds_refresh_ms": Field(Int(1000, 3_600_000), default=20000),
    }), default={}),
    "ingress": Field(Map({
        "connect_timeout_ms": Field(ms(), default=250),
        "timeout_ms": Field(ms(), default=15000),
        # A connection to the local app that fails (or a stream reset before the request was
        # sent) reached nothing: always safe to try again. A new epoch's burst of connections can
        # overflow a small app's listen backlog; these retries absorb it.
        "connect_retries": Field(Int(0, 10), default=3),
        "circuit_breakers": Field(Map({
            "max_connections": Field(count(), default=1024),
            "max_pending_requests": Field(count(), default=1024),
            "max_requests": Field(count(), default=1024),
            # Retries in flight at once (Envoy's default is 3): the connect retries above never
            # reach the app, so a burst of refused connects may all retry.
            "max_retries": Field(Int(0, 1_000_000), default=1024),
        }), default={}),
    }), default={}),
    "databases": Field(Map({
        "connect_timeout_ms": Field(ms(), default=1000),
        "max_connections": Field(count(), default=100),
    }), default={}),
    "caches": Field(Map({
        "connect_timeout_ms": Field(ms(), default=250),
        "op_timeout_ms": Field(ms(), default=100),
    }), default={}),
})

SERVICE = Map({
    "type": Field(Str(choices=["http", "http2", "mongo", "redis", "tcp"]), default="http"),
    "discovery": Field(Str(choices=["static", "strict_dns", "eds"]), default="static"),
    "hosts": Field(ListOf(HostPort(), max_len=1000)),
    "health_check": Field(Bool()),
    # How active health checks talk to this service. http: a GET of health_check_path (over HTTP/2
    # for http2 services); grpc: gRPC's own health protocol (grpc.health.v1.Health/Check), the
    # default for http2 services, asking about health_check_grpc_service ("" = the whole server).
    "health_check_protocol": Field(Str(choices=["http", "grpc"])),
    "health_check_path": Field(URL_PATH),
    "health_check_grpc_service": Field(GRPC_SERVICE),
    "lb_policy": Field(Str(choices=LB_POLICIES)),
    # Mesh TLS: the identities (edge, or catalogue service names) allowed to call this service.
    # Not set: any identity the mesh CA signed. Enforced in mode strict, reported in permissive.
    "callers": Field(ListOf(NAME, max_len=1000)),
})

HEADER_MATCH = Map({
    "name": Field(Str(r"[A-Za-z0-9:_-]+", shape="an HTTP header name"), required=True),
    "exact": Field(Str(max_len=1024)),
    "regex": Field(Str(max_len=1024)),
    "present": Field(Bool()),
}, one_of=[("exact", "regex", "present")])

REDIRECT = Map({
    "https": Field(Bool(), default=False),
    "host": Field(DOMAIN),
    "path": Field(URL_PATH),
    "prefix": Field(URL_PATH),
    "code": Field(Int(301, 308)),
})

ROUTE = Map({
    "name": Field(NAME, required=True),
    "domains": Field(ListOf(DOMAIN), default=["*"]),
    "match": Field(Map({
        "prefix": Field(URL_PATH),
        "path": Field(URL_PATH),
        "regex": Field(Str(max_len=1024)),
        "headers": Field(ListOf(HEADER_MATCH)),
    }, one_of=[("prefix", "path", "regex")]), required=True),
    "service": Field(NAME),
    "redirect": Field(REDIRECT),
    "timeout_ms": Field(Int(0, MS)),
    "max_stream_duration_ms": Field(ms()),
    "stream_idle_timeout_ms": Field(ms()),
    "retries": Field(Int(0, 10)),
    "retry_on": Field(DEFAULTS.fields["upstreams"].spec.fields["retry_on"].spec),
    "per_try_timeout_ms": Field(ms()),
    "host_rewrite": Field(DOMAIN),
    "prefix_rewrite": Field(URL_PATH),
    "https_only": Field(Bool(), default=False),
}, one_of=[("service", "redirect")])

PEM_CERT = Str(r"(?s)\s*-----BEGIN CERTIFICATE-----.+-----END CERTIFICATE-----\s*",
               shape="a PEM certificate (chain)", max_len=1_000_000)
PEM_KEY = Str(r"(?s)\s*-----BEGIN [A-Z ]*PRIVATE KEY-----.+-----END [A-Z ]*PRIVATE KEY-----\s*",
              shape="a PEM private key", secret=True, max_len=1_000_000)

TLS = Map({
    "certificates": Field(ListOf(Map({
        "name": Field(NAME, required=True),
        "server_names": Field(ListOf(DOMAIN)),
        "certificate": Field(PEM_CERT, required=True),
        "private_key": Field(PEM_KEY, required=True),
    })), default=[]),
    "min_version": Field(Str(choices=["TLSv1_2", "TLSv1_3"]), default="TLSv1_2"),
    "alpn": Field(ListOf(Str(choices=["h2", "http/1.1"])), default=["h2", "http/1.1"]),
})

# Mesh TLS between sidecars (docs/mesh-tls.md). The generator reads mode, trust_domain and
# send_tls; the formula the CA and the certificates' lifetime (host_settings.MESH_TLS_DEFAULTS),
# checked here too so that a typo anywhere in the section is reported.
class Mode(Str):
    """One of the mesh TLS modes; a bare ``mode: off`` in YAML (false) means off."""

    def check(self, value, path, where):
        return super().check(mesh_names.mode_of(value), path, where)


MESH_TLS = Map({
    "mode": Field(Mode(choices=list(mesh_names.MODES)), default="off"),
    "trust_domain": Field(Str(mesh_names.TRUST_DOMAIN.pattern, shape="a SPIFFE trust domain such as "
                              "mesh.example.com (lowercase letters, digits, '.', '-', '_'; no scheme)", max_len=255)),
    # Whether callers' Envoys speak mTLS to mesh services. Mode strict implies it; in permissive it
    # is the migration's second step (docs/mesh-tls.md).
    "send_tls": Field(Bool()),
    "ca": Field(Map({
        "minion": Field(Str(r"[^\s*?\[\]!,@]+", shape="a minion id (no glob or list)", max_len=255)),
        "signing_policy": Field(Str(r"[A-Za-z0-9_.-]*(\{identity\}[A-Za-z0-9_.-]*)?",
                                    shape="a signing policy name, optionally with {identity}", max_len=255)),
        "days_valid": Field(Int(1, 36500)),
    })),
    "days_valid": Field(Int(1, 3650)),
    "renew_days_remaining": Field(Int(0, 3650)),
})

OBSERVABILITY = Map({
    "access_log": Field(Map({
        "enabled": Field(Bool(), default=True),
        "path": Field(ABS_PATH),
        "format": Field(Str(max_len=4096)),
    }), default={}),
    "request_id": Field(Bool(), default=True),
    "stats": Field(Map({
        "sink": Field(Str(choices=["statsd", "dogstatsd"]), required=True),
        "address": Field(IPv4(), default="127.0.0.1"),
        "port": Field(Port(), default=8125),
        "prefix": Field(Str(r"[A-Za-z0-9_.-]+", shape="a stats prefix"), default="envoy"),
    })),
    "tracing": Field(Map({
        "zipkin": Field(Map({
            "address": Field(HostPort(), required=True),
            "endpoint": Field(URL_PATH, default="/api/v2/spans"),
        }), required=True),
        "sample_percent": Field(Number(0, 100), default=1.0),
    })),
}, )

LISTENERS = Map({
    "egress": Field(Map({
        "address": Field(IPv4(), default="127.0.0.1"),
        "port": Field(Port(), default=9001),
    }), default={}),
    "ingress": Field(Map({"address": Field(IPv4(), default="0.0.0.0")}), default={}),
    "front": Field(Map({
        "address": Field(IPv4(), default="0.0.0.0"),
        "http_port": Field(Port(), default=8080),
        "https_port": Field(Port(), default=8443),
        "health_check": Field(URL_PATH, default="/healthcheck"),
    }), default={}),
    # Prometheus scrapes this address and port; it serves only /stats/prometheus (from the admin
    # API, which stays on 127.0.0.1) and answers 404 to everything else. Off unless set.
    "stats": Field(Map({
        "address": Field(IPv4(), default="0.0.0.0"),
        "port": Field(Port(), required=True),
    })),
    "max_downstream_connections": Field(count(), default=50000),
    "buffer_limit_bytes": Field(Int(1024, 16 * 1024 * 1024), default=32768),
})

# The sections of pillar `envoy:` the generator owns, each validated on its own so a mistake in
# one does not hide the problems of another. Other keys (lookup, bundle, schedule, restart, ...)
# belong to the formula and are ignored here.
PILLAR_SECTIONS = {
    "roles": Field(ListOf(Str(choices=["sidecar", "front"])), default=["sidecar"]),
    "listeners": Field(LISTENERS, default={}),
    "defaults": Field(DEFAULTS, default={}),
    "overridable": Field(OVERRIDABLE),
    "services": Field(DictOf(NAME, SERVICE), default={}),
    "routes": Field(ListOf(ROUTE), default=[]),
    "tls": Field(TLS, default={}),
    "mesh_tls": Field(MESH_TLS, default={}),
    "observability": Field(OBSERVABILITY, default={}),
}
# The formula's own keys of pillar `envoy:` (not the generator's; never flagged as typos).
FORMULA_KEYS = ("lookup", "bundle", "schedule", "restart", "discovery", "register", "registration", "report")
# Only where Envoy reaches the discovery service; the rest of `envoy:discovery` is the discovery
# engineer's (registration, the service's own settings). Several addresses: instances sharing one
# store, and every Envoy's fetches go through a loopback listener on `retry_port` that retries a
# failed fetch on another instance (docs/discovery.md, the retrying discovery cluster).
DISCOVERY = Map({
    "address": Field(OneOrList(HostPort(), max_len=16)),
    "retry_port": Field(Port(), default=9902),
})

HOST = Map({
    "node_id": Field(Str(max_len=255), required=True),
    "cluster": Field(Str(max_len=255)),
    "hostname": Field(Str(max_len=255)),
    "zone": Field(Str(max_len=255)),
    "admin_address": Field(Str(choices=["127.0.0.1"]), default="127.0.0.1"),
    "admin_port": Field(Port(), required=True),
    "log_dir": Field(ABS_PATH, required=True),
    # static: one envoy.yaml, every change a hot restart; files: a bootstrap plus xDS files under
    # config_dir that the running Envoy applies without a restart (outputs.py).
    "config_mode": Field(Str(choices=["static", "files"]), default="static"),
    "config_dir": Field(ABS_PATH),
    # Where the formula keeps mesh TLS keys, certificates and SDS files (mesh_tls mode not off).
    "pki_dir": Field(ABS_PATH),
})
