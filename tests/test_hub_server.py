"""The loopback Hub (tests/hub_server.py) driven by the real huggingface_hub / transformers / peft clients."""

from __future__ import annotations

import json

import pytest
from roadwork_testing import BLOCK_PROJECT_IMPORTS


BINARY = bytes(range(256)) * 40 + b"\x00\xff\r\n"


def _make_folder(root, text="hello v1\n"):
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "weights.bin").write_bytes(BINARY)
    (root / "nested" / "deeper" / "data.bin").write_bytes(BINARY[::-1])
    (root / "nested" / "notes.txt").write_text(text)
    return root


# ---------------------------------------------------------------- huggingface_hub, in process


def test_whoami(hub):
    from huggingface_hub import HfApi

    me = HfApi().whoami()
    assert me["name"] == hub.username
    assert me["auth"]["accessToken"]["role"] == "write"


def test_writes_and_whoami_need_a_token(hub):
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_session

    assert get_session().get(f"{hub.endpoint}/api/whoami-v2").status_code == 401
    with pytest.raises(ValueError):  # the client refuses token=False itself
        HfApi().whoami(token=False)
    response = get_session().post(f"{hub.endpoint}/api/repos/create", json={"name": "x"})
    assert response.status_code == 401


def test_create_upload_list_download(hub, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    api = HfApi()
    repo_id = hub.unique_repo_id("folder")
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id and url.startswith(hub.endpoint)
    api.create_repo(repo_id, exist_ok=True)  # 409 swallowed

    info = api.upload_folder(repo_id=repo_id, folder_path=_make_folder(tmp_path / "src"), commit_message="v1")
    assert len(info.oid) == 40 and info.oid == hub.head(repo_id)

    expected = [".gitattributes", "nested/deeper/data.bin", "nested/notes.txt", "weights.bin"]
    assert sorted(api.list_repo_files(repo_id)) == expected
    model = api.model_info(repo_id)
    assert model.sha == info.oid
    assert sorted(s.rfilename for s in model.siblings) == expected
    top = {e.path: type(e).__name__ for e in api.list_repo_tree(repo_id)}
    assert top == {"nested": "RepoFolder", "weights.bin": "RepoFile", ".gitattributes": "RepoFile"}
    sub = sorted(e.path for e in api.list_repo_tree(repo_id, path_in_repo="nested", recursive=True))
    assert sub == ["nested/deeper", "nested/deeper/data.bin", "nested/notes.txt"]
    assert api.file_exists(repo_id, "nested/notes.txt") and not api.file_exists(repo_id, "nope.txt")
    infos = api.get_paths_info(repo_id, ["nested", "weights.bin", "nope.txt"])
    assert sorted((e.path, type(e).__name__) for e in infos) == [("nested", "RepoFolder"), ("weights.bin", "RepoFile")]

    for revision in (None, "main", info.oid, info.oid[:10]):
        path = hf_hub_download(repo_id, "nested/deeper/data.bin", revision=revision)
        with open(path, "rb") as f:
            assert f.read() == BINARY[::-1]
    snap = snapshot_download(repo_id, revision="main")
    assert snap.endswith(info.oid)
    with open(f"{snap}/weights.bin", "rb") as f:
        assert f.read() == BINARY


def test_missing_things_raise_the_usual_errors(hub):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id = hub.unique_repo_id("missing")
    hub.seed(repo_id, {"a.txt": "a"})
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "does/not/exist.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "a.txt", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub.unique_repo_id("never-created"), "a.txt")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(hub.unique_repo_id("never-created"))
    with pytest.raises(RepositoryNotFoundError):  # owner-less ids are not supported
        hf_hub_download("gpt2", "config.json")


def test_dataset_repos(hub):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    repo_id = hub.unique_repo_id("data")
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data/train.csv", repo_id=repo_id, repo_type="dataset")
    assert "data/train.csv" in [s.rfilename for s in api.dataset_info(repo_id).siblings]
    with open(hf_hub_download(repo_id, "data/train.csv", repo_type="dataset"), "rb") as f:
        assert f.read() == b"a,b\n1,2\n"
    assert not api.repo_exists(repo_id)  # it is a dataset, not a model


def test_second_commit_moves_main_old_revision_still_served(hub, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    api = HfApi()
    repo_id = hub.unique_repo_id("history")
    api.create_repo(repo_id)
    v1 = api.upload_folder(repo_id=repo_id, folder_path=_make_folder(tmp_path / "v1")).oid
    v2 = api.upload_file(path_or_fileobj=b"hello v2\n", path_in_repo="nested/notes.txt", repo_id=repo_id).oid
    v3 = api.delete_file("weights.bin", repo_id=repo_id).oid
    assert len({v1, v2, v3}) == 3 and api.model_info(repo_id).sha == v3

    def read(revision, name="nested/notes.txt"):
        with open(hf_hub_download(repo_id, name, revision=revision), "rb") as f:
            return f.read()

    assert read("main") == b"hello v2\n"
    assert read(v1) == b"hello v1\n"
    assert read(v1, "weights.bin") == BINARY
    assert "weights.bin" not in api.list_repo_files(repo_id)
    assert api.model_info(repo_id, revision=v1).sha == v1
    commits = api.list_repo_commits(repo_id)
    assert [c.commit_id for c in commits[:3]] == [v3, v2, v1]
    old = snapshot_download(repo_id, revision=v1, local_dir=tmp_path / "old")
    assert (tmp_path / "old" / "weights.bin").read_bytes() == BINARY and old
    # uploading identical content again is a no-op (preupload reports the remote oid)
    again = api.upload_file(path_or_fileobj=b"hello v2\n", path_in_repo="nested/notes.txt", repo_id=repo_id)
    assert again.oid == v3


def test_branches_tags_prs_and_parent_commit(hub):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    repo_id = hub.unique_repo_id("refs")
    base = hub.seed(repo_id, {"f.txt": "main"})
    api.create_branch(repo_id, branch="dev")
    api.create_branch(repo_id, branch="dev", exist_ok=True)
    dev = api.upload_file(path_or_fileobj=b"dev", path_in_repo="f.txt", repo_id=repo_id, revision="dev").oid
    api.create_tag(repo_id, tag="v1.0", revision=base)
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="f.txt", repo_id=repo_id, create_pr=True)
    assert pr.pr_url and pr.pr_revision == "refs/pr/1"

    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": base, "dev": dev}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", base)]
    assert [p.ref for p in refs.pull_requests] == ["refs/pr/1"]
    for revision, content in (("dev", b"dev"), ("v1.0", b"main"), ("refs/pr/1", b"pr"), ("main", b"main")):
        with open(hf_hub_download(repo_id, "f.txt", revision=revision), "rb") as f:
            assert f.read() == content, revision

    with pytest.raises(HfHubHTTPError) as info:  # stale parent_commit
        api.upload_file(path_or_fileobj=b"x", path_in_repo="f.txt", repo_id=repo_id, parent_commit="0" * 40)
    assert info.value.response.status_code == 412


def test_point_hf_client_at_is_undone(hub_server, tmp_path):
    from huggingface_hub import constants, hf_api

    try:
        from conftest import point_hf_client_at
    except ImportError:  # tests/ became a package
        from tests.conftest import point_hf_client_at

    before = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_CACHE, hf_api.api.endpoint)
    with pytest.MonkeyPatch.context() as mp:
        point_hf_client_at(mp, hub_server, tmp_path)
        assert constants.ENDPOINT == hf_api.api.endpoint == hub_server.endpoint
        assert constants.HF_HUB_CACHE == str(tmp_path) and not constants.is_offline_mode()
    assert (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_CACHE,
            hf_api.api.endpoint) == before


# ---------------------------------------------------------------- transformers / peft, in process


def _tiny_dinov3():
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        patch_size=4, image_size=16, num_register_tokens=2,
    )
    return DINOv3ViTModel(config).eval()


def _assert_same_weights(a, b):
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_transformers_push_to_hub_then_from_pretrained(hub):
    import torch
    from huggingface_hub import HfApi
    from transformers import AutoModel, DINOv3ViTModel

    torch.manual_seed(0)
    model = _tiny_dinov3()
    repo_id = hub.unique_repo_id("tiny-dinov3")
    model.push_to_hub(repo_id)
    files = HfApi().list_repo_files(repo_id)
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)

    loaded = DINOv3ViTModel.from_pretrained(repo_id)
    _assert_same_weights(model, loaded)
    auto = AutoModel.from_pretrained(repo_id, revision=hub.head(repo_id))
    assert type(auto).__name__ == "DINOv3ViTModel"
    _assert_same_weights(model, auto)


def test_peft_adapter_push_then_from_pretrained(hub):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    base = _tiny_dinov3()
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at zero: make the adapter non-trivial
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_()
    repo_id = hub.unique_repo_id("tiny-adapter")
    peft_model.push_to_hub(repo_id)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(hub.files(repo_id))

    torch.manual_seed(0)
    fresh_base = _tiny_dinov3()
    loaded = PeftModel.from_pretrained(fresh_base, repo_id)
    lora = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    loaded_lora = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert lora.keys() == loaded_lora.keys() and lora
    for key in lora:
        assert torch.equal(lora[key], loaded_lora[key]), key


# ---------------------------------------------------------------- subprocesses


def test_fresh_python_against_hub_with_xet_enabled(hub_server, fresh_python):
    """The env-var route (HF_ENDPOINT set before import), and upload_folder's Xet pipeline path."""
    repo_id = hub_server.unique_repo_id("subproc")
    proc = fresh_python(
        f"""
        import importlib.util, json, pathlib, tempfile
        from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
        api = HfApi()
        api.create_repo({repo_id!r})
        d = pathlib.Path(tempfile.mkdtemp()); (d / "sub").mkdir()
        (d / "sub" / "b.bin").write_bytes(bytes(range(256)))
        oid = api.upload_folder(repo_id={repo_id!r}, folder_path=d).oid
        path = hf_hub_download({repo_id!r}, "sub/b.bin", revision=oid)
        print(json.dumps(dict(endpoint=constants.ENDPOINT, oid=oid,
                              xet=importlib.util.find_spec("hf_xet") is not None and not constants.HF_HUB_DISABLE_XET,
                              ok=open(path, "rb").read() == bytes(range(256)),
                              snap=snapshot_download({repo_id!r}))))
        """,
        hub=hub_server,
        env_extra={"HF_HUB_DISABLE_XET": None},
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["endpoint"] == hub_server.endpoint and out["ok"] and out["xet"]
    assert out["oid"] == hub_server.head(repo_id)
    assert hub_server.read(repo_id, "sub/b.bin") == bytes(range(256))
    assert not any("xet" in path for _, path, _ in hub_server.requests)


def test_fresh_python_from_pretrained_of_seeded_repo(hub_server, fresh_python, tmp_path):
    """A checkpoint seeded straight into the server is loadable by transformers in a clean process."""
    import torch

    torch.manual_seed(1)
    model = _tiny_dinov3()
    model.save_pretrained(tmp_path / "ckpt")
    repo_id = hub_server.unique_repo_id("seeded")
    hub_server.seed(repo_id, tmp_path / "ckpt")
    expected = float(sum(p.double().sum() for p in model.state_dict().values()))
    proc = fresh_python(
        f"""
        from transformers import AutoModel
        m = AutoModel.from_pretrained({repo_id!r})
        print(repr(float(sum(p.double().sum() for p in m.state_dict().values()))))
        """,
        hub=hub_server,
    )
    assert float(proc.stdout.strip().splitlines()[-1]) == expected


def test_fresh_python_is_offline_and_isolated(fresh_python, tmp_path):
    proc = fresh_python(
        """
        import os, sys
        from huggingface_hub import constants
        print(constants.HF_HUB_OFFLINE, os.environ.get("PYTHONPATH"))
        print(constants.HF_HOME.startswith(os.path.realpath(os.environ["HF_HOME"])) or constants.HF_HOME)
        """
    )
    assert proc.stdout.split() == ["True", "None", "True"]
    # The project is installed (editable), so tests that prove a checkpoint self-contained block its packages.
    blocked = fresh_python(
        BLOCK_PROJECT_IMPORTS
        + "\ntry:\n    import modeling_roadwork\nexcept ImportError as e:\n    print('BLOCKED', e)\n"
    )
    assert "BLOCKED" in blocked.stdout
    with pytest.raises(AssertionError, match="boom"):
        fresh_python("raise SystemExit('boom')")
    assert fresh_python("import sys; sys.exit(3)", check=False).returncode == 3
