"""cluster.yaml: Ray's schema, Ray's own offline validation, and security checks. No cloud, no Ray cluster."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"

WORLD_CIDRS = ("0.0.0.0/0", "::/0")
TOKEN_REMOTE = "~/.ray/auth_token"


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture()
def cfg(text) -> dict:
    return yaml.safe_load(text)


def _start_commands(cfg: dict) -> list[tuple[str, str]]:
    return [
        (key, cmd)
        for key in ("head_start_ray_commands", "worker_start_ray_commands")
        for cmd in cfg.get(key) or []
    ]


def security_problems(cfg: dict, text: str) -> list[str]:
    """Everything wrong with the security of a cluster config; empty when it is fine."""
    problems: list[str] = []

    # 1. Nothing open to the whole internet, anywhere in the file (comments included).
    for cidr in WORLD_CIDRS:
        if cidr in text:
            problems.append(f"{cidr} appears in the file")

    # 2. The security group: SSH (TCP 22) only, from explicit, non-world CIDRs.
    sg = (cfg.get("provider") or {}).get("security_group") or {}
    if not sg.get("GroupName"):
        problems.append("provider.security_group.GroupName is missing")
    rules = sg.get("IpPermissions") or []
    if not rules:
        problems.append("provider.security_group.IpPermissions is empty")
    for i, rule in enumerate(rules):
        if str(rule.get("IpProtocol")) != "tcp":
            problems.append(f"ingress rule {i}: protocol {rule.get('IpProtocol')!r}, not tcp")
        if rule.get("FromPort") != 22 or rule.get("ToPort") != 22:
            problems.append(f"ingress rule {i}: ports {rule.get('FromPort')}-{rule.get('ToPort')}, not 22 only")
        ranges = [r.get("CidrIp") for r in rule.get("IpRanges") or []]
        ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges") or []]
        if not ranges:
            problems.append(f"ingress rule {i}: no source CIDR")
        for cidr in ranges:
            if cidr in WORLD_CIDRS or str(cidr).endswith("/0"):
                problems.append(f"ingress rule {i}: open to the world ({cidr})")
    for name, node_type in (cfg.get("available_node_types") or {}).items():
        if "SecurityGroupIds" in (node_type.get("node_config") or {}):
            # Ray then ignores provider.security_group, so the rules checked above would not apply.
            problems.append(f"node type {name}: SecurityGroupIds bypasses the checked security group")

    # 3. Token auth on every `ray start`, and no way to switch it off.
    starts = [(key, cmd) for key, cmd in _start_commands(cfg) if "ray start" in cmd]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        if not any(k == key for k, _ in starts):
            problems.append(f"{key}: no `ray start` command")
    for key, cmd in starts:
        before = cmd[: cmd.index("ray start")]
        if not re.search(r"\bRAY_AUTH_MODE=token\b", before):
            problems.append(f"{key}: `ray start` without RAY_AUTH_MODE=token before it: {cmd!r}")
    if not any("RAY_AUTH_MODE=token" in c for c in cfg.get("setup_commands") or []):
        problems.append("setup_commands do not export RAY_AUTH_MODE=token for shells and drivers")
    if re.search(r"RAY_AUTH_MODE=(?!token\b)", text):
        problems.append("RAY_AUTH_MODE set to something other than token")

    # 4. The token file comes from the user's ~/.ray (never from the repository) and is made private.
    mounts = cfg.get("file_mounts") or {}
    if TOKEN_REMOTE not in mounts:
        problems.append(f"file_mounts does not sync {TOKEN_REMOTE}")
    else:
        source = str(mounts[TOKEN_REMOTE])
        if not source.startswith("~/.ray/"):
            problems.append(f"token file_mounts source {source!r} is not under ~/.ray")
    for remote, source in mounts.items():
        if remote != TOKEN_REMOTE and "auth_token" in f"{remote} {source}":
            problems.append(f"another file_mounts entry touches a token: {remote!r}: {source!r}")
    if not any(re.search(r"chmod 0?600 [^;&|]*auth_token", c) for c in cfg.get("setup_commands") or []):
        problems.append("setup_commands do not chmod 600 the token on the nodes")

    # 5. Dashboard only on loopback (reached through `ray dashboard cluster.yaml`).
    head_starts = [cmd for key, cmd in starts if key == "head_start_ray_commands"]
    for cmd in head_starts:
        hosts = re.findall(r"--dashboard-host[= ](\S+)", cmd)
        if hosts != ["127.0.0.1"]:
            problems.append(f"head `ray start` dashboard host is {hosts or 'unset'}, not 127.0.0.1")
    for key, cmd in starts:
        if key != "head_start_ray_commands" and "--dashboard-host" in cmd:
            problems.append(f"{key} sets a dashboard host")

    # 6. The head has no GPU; the GPU worker type has one.
    types = cfg.get("available_node_types") or {}
    head = types.get(cfg.get("head_node_type"), {})
    if (head.get("resources") or {}).get("GPU", 0):
        problems.append("the head node type advertises a GPU")
    if (types.get("gpu_worker", {}).get("resources") or {}).get("GPU", 0) < 1:
        problems.append("gpu_worker does not advertise a GPU")

    # 7. Setup installs lossforge (the synced copy) on every node.
    if not any("pip install -e" in c and "lossforge" in c for c in cfg.get("setup_commands") or []):
        problems.append("setup_commands do not install lossforge")
    return problems


# ---------------------------------------------------------------- Ray's own checks


def test_schema_shipped_with_ray_accepts_it(cfg):
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(cfg, schema)


def test_ray_validate_config_offline(cfg):
    # What `ray up` checks before touching the cloud: prepare_config merges the AWS defaults
    # (ray/autoscaler/aws/defaults.yaml, a local file: this fills in e.g. cluster_synced_files, without which
    # validate_config raises "Missing 'cluster_synced_files'"), merges setup commands and fills per-type
    # min/max workers; validate_config runs the schema plus the cross-field checks (head type exists, sum of
    # min_workers <= max_workers). Neither calls AWS. The next step of `ray up`, the provider's bootstrap
    # (bootstrap_aws: IAM role, key pair, subnets, security group, AMI), does, and is not run here.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["gpu_worker"]["max_workers"] == 8
    assert prepared["max_workers"] == 8


def test_ray_validate_config_rejects_a_broken_copy(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(cfg)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def test_ray_aws_opens_ssh_to_the_world_in_groups_it_configures():
    """Why cluster.yaml says to create the security group before `ray up`.

    Ray's AWS provider puts its default rules (intra-cluster, plus SSH from every address) in front of
    provider.security_group.IpPermissions whenever it fills a group that has no rules. If this test starts
    failing, Ray changed that behaviour: revisit the "Network" comment in cluster.yaml.
    """
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    ours = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}
    rules = _create_default_inbound_rules({"sg-1"}, [ours])
    assert rules[-1] == ours
    cidrs = [r["CidrIp"] for rule in rules for r in rule.get("IpRanges", [])]
    assert WORLD_CIDRS[0] in cidrs


# ---------------------------------------------------------------- security


def test_security_problems_none_on_the_real_file(cfg, text):
    assert security_problems(cfg, text) == []


def test_cluster_is_aws_us_west_2_with_up_to_8_g5_gpu_workers(cfg):
    assert cfg["cluster_name"] == "lossforge"
    assert cfg["provider"]["type"] == "aws"
    assert cfg["provider"]["region"] == "us-west-2"
    assert cfg["provider"]["cache_stopped_nodes"] is False
    assert cfg["max_workers"] == 8
    assert cfg["idle_timeout_minutes"] == 10
    worker = cfg["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceType"] == "g5.xlarge"
    assert worker["resources"] == {"CPU": 4, "GPU": 1}
    assert (worker["min_workers"], worker["max_workers"]) == (0, 8)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert "GPU" not in head["resources"] or head["resources"]["GPU"] == 0
    assert cfg["file_mounts"]["~/lossforge"] == "."
    # An explicit (even empty) head_setup_commands replaces Ray's default, which installs boto3; the head's
    # autoscaler cannot launch workers without it.
    assert any("boto3" in c for c in cfg["head_setup_commands"])


def test_setup_installs_lossforge_with_a_path_pip_can_read(cfg):
    cmds = " && ".join(cfg["setup_commands"])
    assert 'pip install "ray[default]==2.60.0"' in cmds
    assert "pip install torch" in cmds
    assert 'pip install -e "$HOME/lossforge[cluster]"' in cmds
    # pip does not expand "~" (pip/_internal/req/constructors.py: parse_editable), and the shell does not
    # expand it inside quotes: a quoted "~/..." would fail on the nodes.
    assert not re.search(r"""pip install[^&;]*["']~/""", cmds)


def _dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def _tamper_world_rule(cfg: dict) -> None:
    cfg["provider"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    )


def _tamper_drop_auth_on_workers(cfg: dict) -> None:
    cfg["worker_start_ray_commands"] = [
        c.replace("export RAY_AUTH_MODE=token;", "") for c in cfg["worker_start_ray_commands"]
    ]


def _tamper_public_dashboard(cfg: dict) -> None:
    cfg["head_start_ray_commands"] = [
        c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0") for c in cfg["head_start_ray_commands"]
    ]


def _tamper_token_from_repo(cfg: dict) -> None:
    cfg["file_mounts"]["~/.ray/auth_token"] = "./auth_token"


def _tamper_all_ports_from_my_ip(cfg: dict) -> None:
    rule = cfg["provider"]["security_group"]["IpPermissions"][0]
    rule.update(IpProtocol="-1", FromPort=-1, ToPort=-1)


def _tamper_gpu_on_head(cfg: dict) -> None:
    cfg["available_node_types"][cfg["head_node_type"]]["resources"]["GPU"] = 1


@pytest.mark.parametrize(
    "tamper, expect",
    [
        (_tamper_world_rule, "0.0.0.0/0"),
        (_tamper_drop_auth_on_workers, "worker_start_ray_commands: `ray start` without RAY_AUTH_MODE=token"),
        (_tamper_public_dashboard, "not 127.0.0.1"),
        (_tamper_token_from_repo, "not under ~/.ray"),
        (_tamper_all_ports_from_my_ip, "not 22 only"),
        (_tamper_gpu_on_head, "head node type advertises a GPU"),
    ],
    ids=["world_rule", "no_auth_on_workers", "public_dashboard", "token_from_repo", "all_ports", "gpu_on_head"],
)
def test_security_problems_catches_tampering(cfg, tamper, expect):
    tampered = copy.deepcopy(cfg)
    tamper(tampered)
    problems = security_problems(tampered, _dump(tampered))
    assert problems, "tampered config passed the security checks"
    assert any(expect in p for p in problems), problems
    # The tampering still passes Ray's own validation: only security_problems stands between it and `ray up`.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(tampered)))


def test_dumped_real_config_still_clean(cfg):
    # The tampered copies are checked as re-dumped YAML (comments gone); make sure that alone is not what
    # makes them fail.
    assert security_problems(cfg, _dump(cfg)) == []
