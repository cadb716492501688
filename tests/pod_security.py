"""The Kubernetes Pod Security Standards (v1.30), as checks on a pod spec.

The admission controller is not available offline, so the deploy tests check
rendered pods with this transcription of the "baseline" and "restricted"
profiles (kubernetes.io/docs/concepts/security/pod-security-standards/). Each
check is named as the admission controller's check IDs are, so that a failure
reads like the warning ``kubectl apply`` would print.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["LEVELS", "violations", "lowest_level"]

LEVELS = ("restricted", "baseline", "privileged")

Spec = dict[str, Any]

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(spec: Spec) -> Iterator[tuple[str, Spec]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"{field[:-1]} {container.get('name')!r}", container


def _security_contexts(spec: Spec) -> Iterator[tuple[str, Spec]]:
    yield "pod", spec.get("securityContext") or {}
    for where, container in _containers(spec):
        yield where, container.get("securityContext") or {}


# --- baseline -----------------------------------------------------------


def _host_process(spec: Spec) -> list[str]:
    return [
        f"{where} sets windowsOptions.hostProcess"
        for where, sc in _security_contexts(spec)
        if (sc.get("windowsOptions") or {}).get("hostProcess")
    ]


def _host_namespaces(spec: Spec) -> list[str]:
    return [
        f"pod sets {f}" for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)
    ]


def _privileged(spec: Spec) -> list[str]:
    return [
        f"{where} is privileged"
        for where, c in _containers(spec)
        if (c.get("securityContext") or {}).get("privileged")
    ]


def _capabilities_baseline(spec: Spec) -> list[str]:
    found = []
    for where, c in _containers(spec):
        added = ((c.get("securityContext") or {}).get("capabilities") or {}).get("add")
        extra = set(added or []) - BASELINE_CAPABILITIES
        if extra:
            found.append(f"{where} adds {sorted(extra)}")
    return found


def _hostpath_volumes(spec: Spec) -> list[str]:
    return [
        f"volume {v.get('name')!r} is a hostPath"
        for v in spec.get("volumes") or []
        if "hostPath" in v
    ]


def _host_ports(spec: Spec) -> list[str]:
    return [
        f"{where} sets hostPort {p['hostPort']}"
        for where, c in _containers(spec)
        for p in c.get("ports") or []
        if p.get("hostPort")
    ]


def _apparmor(spec: Spec, annotations: dict[str, str]) -> list[str]:
    found = []
    for where, sc in _security_contexts(spec):
        kind = (sc.get("appArmorProfile") or {}).get("type")
        if kind not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"{where} sets appArmorProfile {kind}")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/"):
            if value != "runtime/default" and not value.startswith("localhost/"):
                found.append(f"annotation {key}={value}")
    return found


def _selinux(spec: Spec) -> list[str]:
    found = []
    for where, sc in _security_contexts(spec):
        options = sc.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES:
            found.append(f"{where} sets seLinuxOptions.type {options['type']}")
        for field in ("user", "role"):
            if options.get(field):
                found.append(f"{where} sets seLinuxOptions.{field}")
    return found


def _proc_mount(spec: Spec) -> list[str]:
    return [
        f"{where} sets procMount {c['securityContext']['procMount']}"
        for where, c in _containers(spec)
        if (c.get("securityContext") or {}).get("procMount", "Default") != "Default"
    ]


def _seccomp_baseline(spec: Spec) -> list[str]:
    return [
        f"{where} sets seccompProfile Unconfined"
        for where, sc in _security_contexts(spec)
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined"
    ]


def _sysctls(spec: Spec) -> list[str]:
    sysctls = (spec.get("securityContext") or {}).get("sysctls") or []
    return [
        f"pod sets sysctl {s['name']}" for s in sysctls if s["name"] not in SAFE_SYSCTLS
    ]


# --- restricted ---------------------------------------------------------


def _restricted_volumes(spec: Spec) -> list[str]:
    found = []
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume.get('name')!r} is {sorted(kinds)}")
    return found


def _allow_privilege_escalation(spec: Spec) -> list[str]:
    return [
        f"{where} does not set allowPrivilegeEscalation: false"
        for where, c in _containers(spec)
        if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False
    ]


def _run_as_non_root(spec: Spec) -> list[str]:
    pod = (spec.get("securityContext") or {}).get("runAsNonRoot")
    found = []
    for where, c in _containers(spec):
        own = (c.get("securityContext") or {}).get("runAsNonRoot")
        if own is False or (own is None and pod is not True):
            found.append(f"{where} may run as root (runAsNonRoot)")
    return found


def _run_as_user(spec: Spec) -> list[str]:
    return [
        f"{where} sets runAsUser 0"
        for where, sc in _security_contexts(spec)
        if sc.get("runAsUser") == 0
    ]


def _seccomp_restricted(spec: Spec) -> list[str]:
    pod = ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    allowed = ("RuntimeDefault", "Localhost")
    found = []
    for where, c in _containers(spec):
        own = ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        if own not in allowed and not (own is None and pod in allowed):
            found.append(f"{where} has no RuntimeDefault or Localhost seccompProfile")
    return found


def _capabilities_restricted(spec: Spec) -> list[str]:
    found = []
    for where, c in _containers(spec):
        caps = (c.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{where} does not drop ALL capabilities")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            found.append(f"{where} adds {sorted(extra)}")
    return found


Check = Callable[[Spec], list[str]]

BASELINE: dict[str, Check] = {
    "hostProcess": _host_process,
    "host_namespaces": _host_namespaces,
    "privileged": _privileged,
    "capabilities_baseline": _capabilities_baseline,
    "hostPath_volumes": _hostpath_volumes,
    "hostPorts": _host_ports,
    "seLinuxOptions": _selinux,
    "procMount": _proc_mount,
    "seccompProfile_baseline": _seccomp_baseline,
    "sysctls": _sysctls,
}
RESTRICTED: dict[str, Check] = {
    "restricted_volumes": _restricted_volumes,
    "allowPrivilegeEscalation": _allow_privilege_escalation,
    "runAsNonRoot": _run_as_non_root,
    "runAsUser": _run_as_user,
    "seccompProfile_restricted": _seccomp_restricted,
    "capabilities_restricted": _capabilities_restricted,
}


def violations(template: dict[str, Any], level: str) -> dict[str, list[str]]:
    """Return the failed checks of a pod template at ``level``, by check ID.

    Args:
        template: a pod template (``metadata`` and ``spec``) or a Pod.
        level: ``restricted``, ``baseline`` or ``privileged``.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}, expected one of {LEVELS}")
    if level == "privileged":
        return {}
    spec = template.get("spec") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    checks = dict(BASELINE)
    if level == "restricted":
        checks.update(RESTRICTED)
    failed = {name: check(spec) for name, check in checks.items()}
    apparmor = _apparmor(spec, annotations)
    if apparmor:
        failed["appArmorProfile"] = apparmor
    return {name: found for name, found in failed.items() if found}


def lowest_level(template: dict[str, Any]) -> str:
    """Return the most restrictive level whose checks the pod passes."""
    for level in LEVELS:
        if not violations(template, level):
            return level
    raise AssertionError("unreachable: privileged allows everything")
