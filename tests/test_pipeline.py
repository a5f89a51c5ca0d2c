"""The StreetVision miner's call: pipeline("image-classification") on a saved roadwork checkpoint, fresh process."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import torch
from PIL import Image
from roadwork_testing import BLOCK_PROJECT_IMPORTS, VIEW_SIZE, tiny_config

from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor


def test_pipeline_contract_from_a_fresh_process(tmp_path, fresh_python):
    torch.manual_seed(0)
    model = RoadworkForImageClassification(tiny_config()).eval()
    processor = RoadworkImageProcessor(view_size=VIEW_SIZE)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    assert json.loads((checkpoint / "preprocessor_config.json").read_text())["auto_map"] == {
        "AutoImageProcessor": "image_processing_roadwork.RoadworkImageProcessor"
    }

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.png")
    photo.resize((224, 224)).save(tmp_path / "challenge.jpg", format="JPEG", quality=75)
    with torch.no_grad():
        expected = {
            name: model(**processor(Image.open(tmp_path / name).convert("RGB"), return_tensors="pt"))
            .logits.softmax(-1)[0, 1]
            .item()
            for name in ("photo.png", "challenge.jpg")
        }

    code = BLOCK_PROJECT_IMPORTS + textwrap.dedent(
        f"""
        import json
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

        checkpoint, folder = {str(checkpoint)!r}, {str(tmp_path)!r}
        results = {{}}
        # 1. pipeline(model=dir) with a PIL image, a file path and a validator-style 224x224 JPEG
        classifier = pipeline("image-classification", model=checkpoint, trust_remote_code=True)
        results["pil"] = classifier(Image.open(folder + "/photo.png"))
        results["path"] = classifier(folder + "/photo.png")
        results["jpeg224"] = classifier(Image.open(folder + "/challenge.jpg"))
        # 2. exactly as the StreetVision miner builds it
        model = AutoModelForImageClassification.from_pretrained(checkpoint, trust_remote_code=True)
        processor = AutoImageProcessor.from_pretrained(checkpoint, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        miner = pipeline("image-classification", model=model, image_processor=processor)
        results["miner"] = miner(Image.open(folder + "/challenge.jpg"))
        print("RESULTS" + json.dumps(results))
        """
    )
    stdout = fresh_python(code, cwd=tmp_path).stdout
    results = json.loads(stdout.split("RESULTS", 1)[1].strip().splitlines()[0])
    for name, scores in results.items():
        by_label = {entry["label"]: entry["score"] for entry in scores}
        assert set(by_label) == {"Roadwork", "None"}, name
        assert abs(sum(by_label.values()) - 1.0) < 1e-5, name
    for name in ("pil", "path"):
        score = {e["label"]: e["score"] for e in results[name]}["Roadwork"]
        assert abs(score - expected["photo.png"]) < 1e-5, (name, score, expected)
    for name in ("jpeg224", "miner"):
        score = {e["label"]: e["score"] for e in results[name]}["Roadwork"]
        assert abs(score - expected["challenge.jpg"]) < 1e-5, (name, score, expected)
