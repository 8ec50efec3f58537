#!/usr/bin/env python3
"""Structural checks on manifests rendered by `helm template helm/tokenvault`.

kubernetes-validate says each object is well-formed; this says the chart's
objects fit together the way tokenvault needs them to:

- no Secret is ever rendered (every secret comes from an existing Secret);
- config.toml parses, holds only the keys the binary knows, no secret, and
  every file it names is mounted into the container that reads it;
- the keyring is one tokenvault starts with: its [keys.kms] / [keys.pkcs11]
  table matches keys.backend, KEK epochs fit in keys.shred_within_days, a
  key file is never asked to rotate while it comes from a read-only mount,
  and the key table shares the main database only with allow_shared_database;
- [auth.workload_identity] and [[auth.workloads]] hold what load.rs
  validate_auth / validate_workload_identity accept (https issuer, audience,
  bounds, subjects mapped once, known roles), only in the server's config;
- [events] / [events.webhooks] hold only the keys of src/config/events.rs,
  with values load.rs validate_events accepts (positive bounds, networks in
  CIDR form), never allow_http_loopback (development only), and only in the
  server's config;
- server and migration pods are hardened, bounded, and get no automounted
  API token; the only service-account token is the server's projected one
  for the issuer (issuer_token_file), never for the workloads' audience;
- a ClusterRoleBinding grants only system:service-account-issuer-discovery,
  to the server's own ServiceAccount;
- the migration Job is a pre-install/pre-upgrade hook whose ConfigMap and
  ServiceAccount are hooks with a lower weight (they must exist before it);
- the grace period outlasts preStop sleep + drain; selectors of the Service,
  PDB, NetworkPolicy and ServiceMonitor match the server pods; NetworkPolicy
  ingress rules always name their peers; the Ingress never exposes /metrics;
  with a NetworkPolicy, every network in events.webhooks.allowed_networks is
  reachable through an egress ipBlock (not cut out by an `except`).

Usage: helm-assert.py RENDERED.yaml [...]   (exit 1 on the first file that fails)
"""
import ipaddress
import sys

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

CONFIG_PATH = "/etc/tokenvault/config.toml"
UID = 65532

# Keys of config.toml as the binary defines them (deny_unknown_fields).
KNOWN = {
    "server": {"grpc_listen", "http_listen", "public_url", "shutdown_grace_seconds"},
    "tls": {"cert_file", "key_file", "client_ca_file"},
    "log": {"format", "level"},
    "database": {"max_connections", "run_migrations"},
    "keys": {"backend", "file", "allow_shared_database", "rotate_every_days", "destroy_retired_after_days",
             "shred_within_days", "epoch_check_seconds", "rewrap_per_second", "kms", "pkcs11"},
    "auth": {"api_keys_file", "workload_identity", "workloads"},
    "consent": {"allowed_return_origins", "require_confirmation", "tenants_without_confirmation",
                "confirmation_ttl_seconds", "other_account"},
    "providers": None,  # catalog_file + one table per provider, checked below
    "broker": {"max_lease_seconds", "cache_capacity"},
    "lifecycle": {"purge_after_days", "audit_retention_days", "sweep_interval_seconds"},
    "events": {"retention_days", "heartbeat_seconds", "poll_interval_ms", "max_watchers", "webhooks"},
}
# [events.webhooks] (src/config/events.rs, WebhooksConfig, deny_unknown_fields).
EVENTS_WEBHOOKS_KEYS = {"workers", "request_timeout_seconds", "max_response_bytes", "retry_initial_ms", "retry_max_seconds",
                        "give_up_after_seconds", "previous_secret_hours", "allowed_networks", "allow_http_loopback",
                        "max_endpoints_per_tenant"}
# [auth.workload_identity] and one [[auth.workloads]] entry (src/config/mod.rs,
# WorkloadIdentityConfig and WorkloadConfig, deny_unknown_fields).
WORKLOAD_IDENTITY_KEYS = {"issuer", "audience", "ca_file", "issuer_token_file", "leeway_seconds", "max_token_bytes",
                          "refresh_interval_seconds", "keys_max_age_seconds", "timeout_seconds"}
WORKLOAD_KEYS = {"name", "subject", "roles", "tenants"}
ROLES = {"agent", "platform", "admin"}
ISSUER_DISCOVERY_ROLE = "system:service-account-issuer-discovery"
TOP_LEVEL_SECRETS = {"database_url", "key_database_url"}
# Sub-tables of [keys], one per keyring backend (secrets such as `inline` or
# `pkcs11.pin` are left out on purpose: the chart must never render them).
KEYRING_TABLES = {
    "aws-kms": ("kms", {"key_id", "older_key_ids", "region", "endpoint_url", "deletion_pending_days"}),
    "pkcs11": ("pkcs11", {"module", "token_label", "slot", "pin_file", "key_label", "older_key_labels", "max_sessions"}),
}


class Failed(Exception):
    pass


class Checker:
    def __init__(self, name):
        self.name = name
        self.count = 0

    def ok(self, cond, what):
        if not cond:
            raise Failed(f"{self.name}: {what}")
        self.count += 1


def hook_info(obj):
    ann = (obj["metadata"].get("annotations") or {})
    hooks = ann.get("helm.sh/hook")
    if not hooks:
        return None
    return {
        "events": set(hooks.split(",")),
        "weight": int(ann.get("helm.sh/hook-weight", "0")),
        "delete": set(ann.get("helm.sh/hook-delete-policy", "").split(",")),
    }


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def config_file_paths(cfg):
    """Every file path config.toml points at."""
    paths = []
    for section, keys in cfg.items():
        if not isinstance(keys, dict):
            continue
        for key, value in keys.items():
            if isinstance(value, dict):  # [providers.NAME]
                paths += [v for k, v in value.items() if k.endswith("_file")]
            elif key.endswith("_file") or (section == "keys" and key == "file"):
                paths.append(value)
    return paths


def volume_files(volume):
    """Relative paths a volume provides, or None when it is not restricted by items."""
    for kind in ("secret", "configMap"):
        if kind in volume:
            items = volume[kind].get("items")
            return None if items is None else {i["path"] for i in items}
    if "projected" in volume:
        files = set()
        for src in volume["projected"]["sources"]:
            for kind in ("secret", "configMap"):
                if kind in src:
                    files |= {i["path"] for i in src[kind].get("items", [])}
            if "serviceAccountToken" in src:
                files.add(src["serviceAccountToken"]["path"])
        return files
    return None


def check_config(c, cm_name, text, for_migration):
    cfg = tomllib.loads(text)
    c.ok(not (TOP_LEVEL_SECRETS & cfg.keys()), f"{cm_name}: a database URL is written into config.toml")
    for section, value in cfg.items():
        c.ok(section in KNOWN, f"{cm_name}: unknown config section or top-level key {section!r}")
        if KNOWN[section] is not None:
            unknown = set(value) - KNOWN[section]
            c.ok(not unknown, f"{cm_name}: unknown keys in [{section}]: {sorted(unknown)}")
    for name, p in cfg.get("providers", {}).items():
        if name == "catalog_file":
            continue
        c.ok(isinstance(p, dict) and "client_id" in p and "client_secret_file" in p,
             f"{cm_name}: [providers.{name}] needs client_id and client_secret_file")
        c.ok("client_secret" not in p, f"{cm_name}: [providers.{name}] holds a client secret in clear")
    check_keys(c, cm_name, cfg["keys"])
    check_auth(c, cm_name, cfg.get("auth", {}), for_migration)
    check_events(c, cm_name, cfg.get("events"), for_migration)
    c.ok(cfg["database"]["run_migrations"] is False, f"{cm_name}: run_migrations must be false (the hook Job migrates)")
    c.ok(cfg["log"]["format"] in ("json", "pretty"), f"{cm_name}: bad log format")
    if for_migration:
        c.ok("tls" not in cfg, f"{cm_name}: the migration config must not need TLS files (cert-manager's Secret may not exist yet)")
    return cfg


def check_auth(c, cm_name, auth, for_migration):
    """[auth]: inline secrets never; workload identity as load.rs validates it."""
    c.ok("api_keys" not in auth, f"{cm_name}: [auth] must not carry inline API keys")
    identity = auth.get("workload_identity")
    workloads = auth.get("workloads", [])
    if for_migration:
        c.ok(identity is None and not workloads,
             f"{cm_name}: the migration config must not carry workload identity (its files are the server's)")
        return
    c.ok(isinstance(workloads, list), f"{cm_name}: auth.workloads must be an array of tables")
    c.ok(identity is not None or not workloads, f"{cm_name}: [[auth.workloads]] needs [auth.workload_identity]")
    subjects = set()
    for w in workloads:
        unknown = set(w) - WORKLOAD_KEYS
        c.ok(not unknown, f"{cm_name}: unknown keys in [[auth.workloads]]: {sorted(unknown)}")
        subject = w.get("subject", "")
        c.ok(isinstance(subject, str) and subject.strip(), f"{cm_name}: [[auth.workloads]] needs a subject")
        c.ok(subject not in subjects, f"{cm_name}: auth.workloads subject {subject!r} is mapped twice")
        subjects.add(subject)
        roles = w.get("roles", [])
        c.ok(roles and set(roles) <= ROLES, f"{cm_name}: auth.workloads {subject!r}: roles {roles!r} (need one of {sorted(ROLES)})")
        tenants = w.get("tenants", [])
        c.ok(tenants and all(isinstance(t, str) and t for t in tenants), f"{cm_name}: auth.workloads {subject!r}: no tenants")
    if identity is None:
        return
    c.ok(isinstance(identity, dict), f"{cm_name}: auth.workload_identity must be a table")
    unknown = set(identity) - WORKLOAD_IDENTITY_KEYS
    c.ok(not unknown, f"{cm_name}: unknown keys in [auth.workload_identity]: {sorted(unknown)}")
    issuer = identity.get("issuer", "")
    c.ok(isinstance(issuer, str) and issuer.startswith("https://") and "?" not in issuer and "#" not in issuer,
         f"{cm_name}: auth.workload_identity.issuer {issuer!r} must be an https URL without query or fragment")
    c.ok(str(identity.get("audience", "")).strip(), f"{cm_name}: auth.workload_identity.audience is empty")
    c.ok(256 <= identity.get("max_token_bytes", 8192) <= 65536, f"{cm_name}: max_token_bytes outside 256..65536")
    c.ok(identity.get("leeway_seconds", 30) <= 300, f"{cm_name}: leeway_seconds over 300")
    c.ok(identity.get("timeout_seconds", 5) >= 1 and identity.get("refresh_interval_seconds", 30) >= 1,
         f"{cm_name}: timeout_seconds and refresh_interval_seconds must be at least 1")
    for key in ("ca_file", "issuer_token_file"):
        if key in identity:
            c.ok(identity[key].startswith("/"), f"{cm_name}: auth.workload_identity.{key} must be an absolute path")


def check_events(c, cm_name, events, for_migration):
    """[events] / [events.webhooks]: what load.rs validate_events accepts, server only."""
    if for_migration:
        c.ok(events is None, f"{cm_name}: the migration config must not carry [events] (it serves no events)")
        return
    c.ok(isinstance(events, dict), f"{cm_name}: the server config must render [events]")
    for key in ("retention_days", "heartbeat_seconds"):
        c.ok(key in events, f"{cm_name}: events.{key} must be explicit")
    for key in ("retention_days", "heartbeat_seconds", "poll_interval_ms", "max_watchers"):
        if key in events:
            c.ok(isinstance(events[key], int) and events[key] >= 1, f"{cm_name}: events.{key} must be a positive integer")
    hooks = events.get("webhooks")
    c.ok(isinstance(hooks, dict), f"{cm_name}: the server config must render [events.webhooks]")
    unknown = set(hooks) - EVENTS_WEBHOOKS_KEYS
    c.ok(not unknown, f"{cm_name}: unknown keys in [events.webhooks]: {sorted(unknown)}")
    c.ok("allow_http_loopback" not in hooks,
         f"{cm_name}: events.webhooks.allow_http_loopback is development only; the chart must not render it")
    c.ok(isinstance(hooks.get("workers"), int) and hooks["workers"] >= 0,
         f"{cm_name}: events.webhooks.workers must be an integer >= 0")
    for key in ("request_timeout_seconds", "retry_initial_ms", "retry_max_seconds", "give_up_after_seconds",
                "max_endpoints_per_tenant"):
        c.ok(isinstance(hooks.get(key), int) and hooks[key] >= 1,
             f"{cm_name}: events.webhooks.{key} must be a positive integer")
    c.ok(isinstance(hooks.get("previous_secret_hours"), int) and hooks["previous_secret_hours"] >= 0,
         f"{cm_name}: events.webhooks.previous_secret_hours must be an integer >= 0")
    networks = hooks.get("allowed_networks")
    c.ok(isinstance(networks, list), f"{cm_name}: events.webhooks.allowed_networks must be an array")
    for n in networks:
        try:
            ok = "/" in n and bool(ipaddress.ip_network(n, strict=False))
        except (TypeError, ValueError):
            ok = False
        c.ok(ok, f"{cm_name}: events.webhooks.allowed_networks: {n!r} is not a network in CIDR form")


def check_service_account_tokens(c, where, spec, ctr, cfg, server):
    """The only service-account token a pod gets: the server's own, for the issuer, and for no workload audience."""
    identity = cfg.get("auth", {}).get("workload_identity") or {}
    token_file = identity.get("issuer_token_file") if server else None
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    token_volumes = {name: src["serviceAccountToken"] for name, v in volumes.items() if "projected" in v
                     for src in v["projected"]["sources"] if "serviceAccountToken" in src}
    if token_file is None:
        c.ok(not token_volumes, f"{where}: a service-account token is projected ({sorted(token_volumes)}) but nothing reads it")
        return
    mounted = [m for m in ctr.get("volumeMounts", []) if m["name"] in token_volumes]
    c.ok(len(token_volumes) == 1 and len(mounted) == 1, f"{where}: exactly one projected token, for issuer_token_file")
    mount = mounted[0]
    token = token_volumes[mount["name"]]
    c.ok(mount.get("readOnly") is True, f"{where}: the issuer token must be mounted read-only")
    c.ok(token_file == mount["mountPath"].rstrip("/") + "/" + token["path"],
         f"{where}: issuer_token_file {token_file} is not the projected token's path")
    c.ok(token.get("audience") != identity.get("audience"),
         f"{where}: tokenvault's own issuer token is for the workloads' audience {identity.get('audience')!r}: it would authenticate to tokenvault")
    c.ok(token.get("expirationSeconds", 3600) >= 600, f"{where}: a projected token lives at least 600 s")


def check_keys(c, cm_name, keys):
    """The [keys] section: what load.rs validate_keys / validate_epochs and setup.rs check_production demand."""
    backend = keys.get("backend", "file")
    c.ok(backend in ("file", "aws-kms", "pkcs11"), f"{cm_name}: unknown keys.backend {backend!r}")
    c.ok("inline" not in keys and "active" not in keys, f"{cm_name}: [keys] must not carry inline keys or `active`")
    c.ok(("file" in keys) == (backend == "file"), f"{cm_name}: keys.file must be set when, and only when, backend = \"file\"")
    for other, (table, allowed) in KEYRING_TABLES.items():
        if other != backend:
            c.ok(table not in keys, f"{cm_name}: [keys.{table}] is set but keys.backend is {backend!r}")
            continue
        sub = keys.get(table)
        c.ok(isinstance(sub, dict), f"{cm_name}: keys.backend = {backend!r} needs [keys.{table}]")
        unknown = set(sub) - allowed
        c.ok(not unknown, f"{cm_name}: unknown keys in [keys.{table}]: {sorted(unknown)}")
    if backend == "aws-kms":
        kms = keys["kms"]
        c.ok(kms.get("key_id") and kms.get("region"), f"{cm_name}: [keys.kms] needs key_id and region")
        c.ok(7 <= kms.get("deletion_pending_days", 7) <= 30, f"{cm_name}: keys.kms.deletion_pending_days outside 7..30")
    if backend == "pkcs11":
        hsm = keys["pkcs11"]
        for field in ("module", "token_label", "key_label", "pin_file"):
            c.ok(hsm.get(field), f"{cm_name}: [keys.pkcs11] needs {field}")
        c.ok(hsm["module"].startswith("/"), f"{cm_name}: keys.pkcs11.module must be an absolute path")
    # The chart always says how long epochs are: unset would mean 7 outside development.
    c.ok("rotate_every_days" in keys, f"{cm_name}: keys.rotate_every_days must be explicit")
    rotate = keys["rotate_every_days"]
    if rotate > 0:
        delay = keys["kms"].get("deletion_pending_days", 7) if backend == "aws-kms" else 0
        window = rotate + keys.get("destroy_retired_after_days", 14) + delay
        c.ok(keys.get("destroy_retired_after_days", 14) >= 1, f"{cm_name}: destroy_retired_after_days must be >= 1 with epochs")
        c.ok(window <= keys.get("shred_within_days", 30),
             f"{cm_name}: KEK epochs window {window} days exceeds shred_within_days {keys.get('shred_within_days', 30)}")


def check_key_storage(c, where, ctr, volumes, keys):
    """A key file that must rotate needs a writable mount; a shared key table needs the flag."""
    env = {e["name"] for e in ctr.get("env", [])}
    c.ok("TOKENVAULT_KEY_DATABASE_URL" in env or keys.get("allow_shared_database") is True,
         f"{where}: the key table is in the main database but keys.allow_shared_database is not true (tokenvault refuses to start)")
    if keys.get("backend", "file") == "file" and keys["rotate_every_days"] > 0:
        path = keys["file"]
        for m in ctr.get("volumeMounts", []):
            if path.startswith(m["mountPath"].rstrip("/") + "/"):
                vol = volumes[m["name"]]
                c.ok(not m.get("readOnly") and not ({"secret", "configMap", "projected"} & vol.keys()),
                     f"{where}: KEK epochs rewrite {path}, but it is mounted read-only (tokenvault refuses to start)")


def check_pod(c, kind, name, spec, cfg):
    where = f"{kind}/{name}"
    c.ok(spec.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken must be false")
    psc = spec.get("securityContext") or {}
    c.ok(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == UID, f"{where}: pod must run as non-root uid {UID}")
    c.ok((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{where}: pod seccompProfile RuntimeDefault")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for ctr in spec["containers"]:
        cwhere = f"{where} container {ctr['name']}"
        sc = ctr.get("securityContext") or {}
        c.ok(sc.get("readOnlyRootFilesystem") is True, f"{cwhere}: readOnlyRootFilesystem")
        c.ok(sc.get("allowPrivilegeEscalation") is False, f"{cwhere}: allowPrivilegeEscalation false")
        c.ok(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cwhere}: capabilities.drop [ALL]")
        c.ok(sc.get("runAsNonRoot") is True, f"{cwhere}: runAsNonRoot")
        res = ctr.get("resources") or {}
        c.ok(res.get("requests") and res.get("limits"), f"{cwhere}: resources requests and limits")
        args = ctr.get("args", [])
        c.ok(args[1:3] == ["--config", CONFIG_PATH], f"{cwhere}: args must pass --config {CONFIG_PATH}")
        env = {e["name"]: e for e in ctr.get("env", [])}
        db = env.get("TOKENVAULT_DATABASE_URL", {})
        c.ok("secretKeyRef" in db.get("valueFrom", {}), f"{cwhere}: TOKENVAULT_DATABASE_URL must come from a secretKeyRef")
        c.ok(all("value" not in e or not e["name"].endswith("_URL") for e in env.values()),
             f"{cwhere}: a URL is set as a literal env value")
        mounts = ctr.get("volumeMounts", [])
        tmp = [m for m in mounts if m["mountPath"] == "/tmp"]
        c.ok(tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{cwhere}: /tmp must be an emptyDir")
        # Every file config.toml names must be provided by a mount.
        for path in [CONFIG_PATH] + config_file_paths(cfg):
            found = False
            for m in mounts:
                vol = volumes.get(m["name"])
                c.ok(vol is not None, f"{cwhere}: mount {m['name']} has no volume")
                if m.get("subPath"):
                    found |= m["mountPath"] == path
                elif path.startswith(m["mountPath"].rstrip("/") + "/"):
                    rel = path[len(m["mountPath"].rstrip("/")) + 1:]
                    files = volume_files(vol)
                    found |= files is None or rel in files
            c.ok(found, f"{cwhere}: {path} (named in config.toml) is not mounted")
        check_key_storage(c, cwhere, ctr, volumes, cfg["keys"])
        check_service_account_tokens(c, cwhere, spec, ctr, cfg, server=kind == "Deployment")
        # Secrets come from Secrets, never from values rendered here.
        for v in volumes.values():
            if "secret" in v:
                c.ok(v["secret"]["secretName"], f"{where}: volume {v['name']} has no secretName")


def egress_allows(policies, net):
    """Whether an egress ipBlock of one of the policies covers all of `net`."""
    for np in policies:
        for rule in np["spec"].get("egress", []):
            for peer in rule.get("to", []):
                block = peer.get("ipBlock")
                if not block:
                    continue
                cidr = ipaddress.ip_network(block["cidr"], strict=False)
                if cidr.version != net.version or not net.subnet_of(cidr):
                    continue
                excepts = [ipaddress.ip_network(e, strict=False) for e in block.get("except", [])]
                if not any(e.version == net.version and e.overlaps(net) for e in excepts):
                    return True
    return False


def check_file(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    c = Checker(path)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    c.ok("Secret" not in by_kind, "the chart rendered a Secret; secrets must come from existing Secrets")
    deployments = by_kind.get("Deployment", [])
    c.ok(len(deployments) == 1, "exactly one Deployment")
    dep = deployments[0]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    pod = dep["spec"]["template"]["spec"]

    for sa in by_kind.get("ServiceAccount", []):
        c.ok(sa.get("automountServiceAccountToken") is False, f"ServiceAccount/{sa['metadata']['name']}: automount must be false")
    c.ok("ClusterRole" not in by_kind and "Role" not in by_kind and "RoleBinding" not in by_kind,
         "the chart defines no role of its own and binds none in a namespace")
    for crb in by_kind.get("ClusterRoleBinding", []):
        name = crb["metadata"]["name"]
        c.ok(crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ISSUER_DISCOVERY_ROLE},
             f"ClusterRoleBinding/{name}: may bind only the ClusterRole {ISSUER_DISCOVERY_ROLE}")
        c.ok(crb["subjects"] == [{"kind": "ServiceAccount", "name": pod.get("serviceAccountName", "default"),
                                  "namespace": dep["metadata"]["namespace"]}],
             f"ClusterRoleBinding/{name}: must bind the server's ServiceAccount alone")

    # --- server ---------------------------------------------------------
    cm_name = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "config")
    cm = objects.get(("ConfigMap", cm_name))
    c.ok(cm is not None and hook_info(cm) is None, f"Deployment config ConfigMap {cm_name} must be an ordinary resource of the chart")
    cfg = check_config(c, cm_name, cm["data"]["config.toml"], for_migration=False)
    check_pod(c, "Deployment", dep["metadata"]["name"], pod, cfg)
    identity = cfg.get("auth", {}).get("workload_identity")
    if by_kind.get("ClusterRoleBinding"):
        c.ok(identity and identity.get("issuer_token_file"),
             "a ClusterRoleBinding for issuer discovery, but tokenvault sends the issuer no token")
    ann = dep["spec"]["template"]["metadata"].get("annotations") or {}
    c.ok(len(ann.get("checksum/config", "")) == 64, "Deployment: checksum/config annotation rolls pods on config change")
    ctr = pod["containers"][0]
    c.ok(ctr["args"][0] == "serve", "Deployment: runs serve")
    sleep = ((ctr.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    drain = cfg["server"]["shutdown_grace_seconds"]
    c.ok(pod["terminationGracePeriodSeconds"] > drain + sleep,
         f"Deployment: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} must exceed drain {drain} + preStop {sleep}")
    for probe in ("livenessProbe", "readinessProbe"):
        c.ok(probe in ctr, f"Deployment: {probe}")
        if "grpc" in ctr[probe]:
            c.ok("tls" not in cfg, f"Deployment: {probe} is a gRPC probe but the listener speaks TLS (kubelet cannot)")
            c.ok(ctr[probe]["grpc"]["port"] == int(cfg["server"]["grpc_listen"].rsplit(":", 1)[1]),
                 f"Deployment: {probe} gRPC port is not the listener's")
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    c.ok(ports.get("grpc") == int(cfg["server"]["grpc_listen"].rsplit(":", 1)[1]), "grpc containerPort = grpc_listen port")
    c.ok(ports.get("http") == int(cfg["server"]["http_listen"].rsplit(":", 1)[1]), "http containerPort = http_listen port")

    # --- Services, PDB, HPA, NetworkPolicy, ServiceMonitor, Ingress ----------
    for svc in by_kind.get("Service", []):
        c.ok(matches(svc["spec"]["selector"], pod_labels), f"Service/{svc['metadata']['name']}: selector misses the pods")
        for p in svc["spec"]["ports"]:
            if p["name"] == "grpc":
                c.ok(p.get("appProtocol") == "grpc", f"Service/{svc['metadata']['name']}: grpc port needs appProtocol grpc")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        c.ok(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB selector misses the pods")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        c.ok(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "HPA targets the Deployment")
        c.ok("replicas" not in dep["spec"], "Deployment must leave replicas to the HPA")
    for np in by_kind.get("NetworkPolicy", []):
        for rule in np["spec"].get("ingress", []):
            c.ok(rule.get("from"), f"NetworkPolicy/{np['metadata']['name']}: an ingress rule without 'from' admits everyone")
    server_nps = [np for np in by_kind.get("NetworkPolicy", []) if hook_info(np) is None]
    for np in server_nps:
        c.ok(matches(np["spec"]["podSelector"]["matchLabels"], pod_labels), "NetworkPolicy selects the server pods")
    if server_nps:
        for net in cfg["events"]["webhooks"]["allowed_networks"]:
            c.ok(egress_allows(server_nps, ipaddress.ip_network(net, strict=False)),
                 f"NetworkPolicy: events.webhooks.allowed_networks lists {net}, but no egress rule reaches it")
    for sm in by_kind.get("ServiceMonitor", []):
        svc_labels = by_kind["Service"][0]["metadata"]["labels"]
        c.ok(matches(sm["spec"]["selector"]["matchLabels"], svc_labels), "ServiceMonitor selects the Service")
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                public = (p["path"], p["pathType"]) in {("/oauth/start", "Prefix"), ("/oauth/callback", "Prefix")}
                c.ok(public, f"Ingress exposes {p['path']} ({p['pathType']}); only the consent start links and "
                     "callbacks (/oauth/start, /oauth/callback, Prefix) should be public")

    # --- migration hook ---------------------------------------------------
    for job in by_kind.get("Job", []):
        jname = job["metadata"]["name"]
        hook = hook_info(job)
        c.ok(hook and hook["events"] == {"pre-install", "pre-upgrade"}, f"Job/{jname}: must be a pre-install,pre-upgrade hook")
        c.ok({"before-hook-creation", "hook-succeeded"} <= hook["delete"], f"Job/{jname}: hook-delete-policy")
        jpod = job["spec"]["template"]["spec"]
        c.ok(jpod["containers"][0]["args"][0] == "migrate", f"Job/{jname}: runs migrate")
        jcm_name = next(v["configMap"]["name"] for v in jpod["volumes"] if v["name"] == "config")
        jcm = objects.get(("ConfigMap", jcm_name))
        jcm_hook = jcm and hook_info(jcm)
        c.ok(jcm_hook and hook["events"] <= jcm_hook["events"] and jcm_hook["weight"] < hook["weight"],
             f"Job/{jname}: its ConfigMap {jcm_name} must be a hook of the same events with a lower weight")
        sa = objects.get(("ServiceAccount", jpod.get("serviceAccountName", "default")))
        if sa is not None:  # rendered by the chart: it must exist before the Job runs
            sa_hook = hook_info(sa)
            c.ok(sa_hook and hook["events"] <= sa_hook["events"] and sa_hook["weight"] < hook["weight"],
                 f"Job/{jname}: its ServiceAccount must be a hook with a lower weight")
        jcfg = check_config(c, jcm_name, jcm["data"]["config.toml"], for_migration=True)
        check_pod(c, "Job", jname, jpod, jcfg)
    return c.count


def main(paths):
    try:
        for path in paths:
            n = check_file(path)
            print(f"helm-assert: {n} checks passed")
    except Failed as e:
        print(f"helm-assert FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
