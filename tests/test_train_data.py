"""Training data: reproducible clips, the flow rule, augmentation, loaders and their errors."""

import cv2
import numpy as np
import pytest
import torch

from vo_node.config import ConfigError
from vo_node.train import data
from vo_node.train.config import AugmentConfig, load_train_config
from vo_node.train.data import DatasetError

TINY = "config/train_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_config():
    return load_train_config(TINY)


def test_same_seed_same_clip(tiny_config):
    first = data.ClipDataset(tiny_config.data, seed=3)[5]
    second = data.ClipDataset(tiny_config.data, seed=3)[5]
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other = data.ClipDataset(tiny_config.data, seed=3, rank=1)[5]
    assert not torch.equal(first["images"], other["images"])


def test_clip_shapes_and_normalised_scale(tiny_config):
    clip = data.ClipDataset(tiny_config.data, seed=0)[0]
    n, height, width = tiny_config.data.n_frames, tiny_config.data.height, tiny_config.data.width
    assert clip["images"].shape == (n, 3, height, width)
    assert clip["images"].dtype == torch.uint8
    assert clip["depths"].shape == (n, height, width)
    assert clip["poses_cw"].shape == (n, 7)
    assert torch.all(clip["frames"][1:] > clip["frames"][:-1])
    inverse = 1.0 / clip["depths"][clip["depths"] > 0].double()
    # Augmentation crops after the percentile is taken, so allow a few percent.
    percentile = float(np.percentile(inverse.numpy(), 98.0))
    assert percentile == pytest.approx(1.0 / 0.7, rel=0.15)


def test_flow_rule_picks_frames_inside_range():
    # Flow grows 3 pixels per frame: only jumps of 2 or 3 frames lie inside (5, 10).
    rng = np.random.default_rng(0)
    picked = data.select_frames(200, 8, lambda i, j: 3.0 * (j - i), (5.0, 10.0), rng)
    steps = np.diff(picked)
    assert set(steps.tolist()) <= {2, 3}
    assert len(picked) == 8


def test_flow_rule_falls_back_to_next_frame():
    rng = np.random.default_rng(0)
    picked = data.select_frames(10, 5, lambda i, j: 100.0, (5.0, 10.0), rng)
    assert np.all(np.diff(picked) == 1)


def test_flow_rule_rejects_short_sequence():
    with pytest.raises(DatasetError, match="too short"):
        data.select_frames(3, 5, lambda i, j: 1.0, (0.0, 2.0), np.random.default_rng(0))


def test_colour_augmentation_is_consistent_across_frames():
    frame = torch.rand(1, 3, 16, 16) * 255
    images = frame.expand(4, -1, -1, -1).clone()
    config = AugmentConfig(color_p=1.0, grayscale_p=0.0, invert_p=0.0)
    augmented = data.augment_colour(images, config, np.random.default_rng(1))
    assert not torch.allclose(augmented[0], images[0])
    for index in range(1, 4):
        assert torch.equal(augmented[index], augmented[0])


def test_invert_and_grayscale():
    images = torch.rand(2, 3, 8, 8) * 255
    identity = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    inverted = data.augment_colour(
        images, AugmentConfig(color_p=1.0, grayscale_p=0.0, invert_p=1.0, **identity),
        np.random.default_rng(0),
    )
    assert torch.allclose(inverted, 255.0 - images, atol=1e-3)
    gray = data.augment_colour(
        images, AugmentConfig(color_p=1.0, grayscale_p=1.0, invert_p=0.0, **identity),
        np.random.default_rng(0),
    )
    assert torch.allclose(gray[:, 0], gray[:, 1])
    assert torch.allclose(gray[:, 1], gray[:, 2])


def test_crop_keeps_projection_consistent():
    """A 3-D point projects to the same image content before and after scaling and cropping."""
    height, width = 48, 64
    images = torch.zeros(1, 3, height, width)
    images[0, :, 20, 30] = 255.0  # one bright pixel
    depths = torch.ones(1, height, width)
    intrinsics = torch.tensor([50.0, 50.0, 31.5, 23.5])
    out_images, out_depths, out_intrinsics = data.resize_and_crop(
        images, depths, intrinsics, (32, 48), zoom=2.0
    )
    assert out_images.shape == (1, 3, 32, 48)
    assert out_depths.shape == (1, 32, 48)
    # The point behind pixel (30, 20): normalised coordinates stay, pixels follow the intrinsics.
    x = (30 - intrinsics[0 + 2]) / intrinsics[0]
    y = (20 - intrinsics[3]) / intrinsics[1]
    u = float(out_intrinsics[0] * x + out_intrinsics[2])
    v = float(out_intrinsics[1] * y + out_intrinsics[3])
    brightest = torch.nonzero(out_images[0, 0] == out_images[0, 0].max())[0]
    assert abs(brightest[1].item() - u) <= 1.0
    assert abs(brightest[0].item() - v) <= 1.0


def test_normalise_scale_sets_percentile():
    depths = torch.linspace(1.0, 10.0, 1000).reshape(1, 10, 100)
    poses = torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    normalised, poses_out, scale = data.normalise_scale(depths, poses, 98.0, 0.7)
    inverse = 1.0 / normalised.double()
    assert float(np.percentile(inverse.numpy(), 98.0)) == pytest.approx(1.0 / 0.7, rel=1e-6)
    assert torch.allclose(poses_out[0, :3], poses[0, :3] * scale)


def write_tartanair(folder, count=4, depth_count=None, pose_lines=None):
    (folder / "image_left").mkdir(parents=True)
    (folder / "depth_left").mkdir()
    for index in range(count):
        image = np.full((32, 48, 3), (40 * index) % 256, dtype=np.uint8)
        cv2.imwrite(str(folder / "image_left" / f"{index:06d}_left.png"), image)
    for index in range(count if depth_count is None else depth_count):
        np.save(folder / "depth_left" / f"{index:06d}_left_depth.npy",
                np.full((32, 48), 2.0 + index, dtype=np.float32))
    if pose_lines is None:
        # Camera moving 0.5 m per frame along NED x (forward).
        pose_lines = [f"{0.5 * index} 0 0 0 0 0 1" for index in range(count)]
    (folder / "pose_left.txt").write_text("\n".join(pose_lines) + "\n")
    return folder


def test_tartanair_loader_converts_ned(tmp_path):
    sequence = data.TartanAirSequence(write_tartanair(tmp_path / "P000"))
    assert len(sequence) == 4
    frames = sequence.load([0, 2])
    assert frames.images.shape == (2, 32, 48, 3)
    assert frames.depths[1, 0, 0] == pytest.approx(4.0)
    # NED forward (x) is the optical z axis.
    assert np.allclose(frames.poses_wc[1, :3], [0.0, 0.0, 1.0])


def test_tartanair_count_mismatch_names_folder(tmp_path):
    folder = write_tartanair(tmp_path / "P001", count=4, depth_count=3)
    with pytest.raises(DatasetError, match="3 depth maps") as error:
        data.TartanAirSequence(folder)
    assert str(folder) in str(error.value)


def test_malformed_pose_file_names_line(tmp_path):
    folder = write_tartanair(tmp_path / "P002", count=2,
                             pose_lines=["0 0 0 0 0 0 1", "0 0 0 0 0 1"])
    with pytest.raises(DatasetError, match=r"pose_left.txt:2: expected 7 numbers"):
        data.TartanAirSequence(folder)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        data.discover_sequences("tartanair", [str(tmp_path / "absent")])


def test_empty_root_names_marker(tmp_path):
    with pytest.raises(DatasetError, match="pose_left.txt"):
        data.discover_sequences("tartanair", [str(tmp_path)])


def test_evaluation_data_is_rejected(tmp_path, monkeypatch):
    write_tartanair(tmp_path / "eval" / "P000")
    monkeypatch.setenv("VO_NODE_DATA", str(tmp_path / "eval"))
    with pytest.raises(DatasetError, match="evaluation"):
        data.discover_sequences("tartanair", [str(tmp_path / "eval")])


def test_tum_loader_associates_and_scales_depth(tmp_path):
    folder = tmp_path / "rgbd_dataset_freiburg1_xyz"
    (folder / "rgb").mkdir(parents=True)
    (folder / "depth").mkdir()
    rgb_lines, depth_lines, pose_lines = ["# rgb"], ["# depth"], ["# ground truth"]
    for index in range(3):
        stamp = 100.0 + 0.1 * index
        cv2.imwrite(str(folder / "rgb" / f"{index}.png"), np.zeros((24, 32, 3), np.uint8))
        cv2.imwrite(str(folder / "depth" / f"{index}.png"), np.full((24, 32), 5000 * (index + 1),
                                                                    np.uint16))
        rgb_lines.append(f"{stamp:.6f} rgb/{index}.png")
        depth_lines.append(f"{stamp + 0.005:.6f} depth/{index}.png")
        pose_lines.append(f"{stamp + 0.001:.6f} {index} 0 0 0 0 0 1")
    (folder / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (folder / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    (folder / "groundtruth.txt").write_text("\n".join(pose_lines) + "\n")
    sequences = data.discover_sequences("tum", [str(tmp_path)])
    assert len(sequences) == 1
    frames = sequences[0].load([0, 2])
    assert frames.depths[1, 0, 0] == pytest.approx(3.0)
    assert np.allclose(frames.poses_wc[1, :3], [2.0, 0.0, 0.0])
    assert frames.intrinsics[0] == pytest.approx(517.3)


def test_tum_missing_ground_truth(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    (folder / "rgb.txt").write_text("1.0 rgb/0.png\n")
    (folder / "depth.txt").write_text("1.0 depth/0.png\n")
    with pytest.raises(DatasetError, match="groundtruth.txt"):
        data.TumSequence(folder)


def test_unknown_config_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  n_frame: 5\n")
    with pytest.raises(ConfigError, match="data.n_frame"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_train_config(TINY, {"optim.learning_rate": 1.0})


def test_real_source_needs_roots():
    with pytest.raises(ConfigError, match="data.roots"):
        load_train_config(TINY, {"data.source": "tartanair"})


def test_loader_resumes_at_index(tiny_config):
    dataset = data.ClipDataset(tiny_config.data, seed=1)
    loader = data.make_loader(dataset, start=2, stop=4, num_workers=0, prefetch_factor=2, seed=0)
    clips = list(loader)
    assert len(clips) == 2
    assert torch.equal(clips[0]["images"], dataset[2]["images"])


@pytest.mark.parametrize("name", ["train_tiny", "train_small", "train_full"])
def test_shipped_recipes_load(name, tmp_path):
    overrides = {"data.roots": [str(tmp_path)]} if name == "train_full" else {}
    config = load_train_config(f"config/{name}.yaml", overrides)
    assert config.loss.flow_weighting == "sigma"
    assert config.balance.enabled


def test_tartanair_clip_through_dataset(tmp_path):
    write_tartanair(tmp_path / "scene" / "P000", count=12)
    config = load_train_config(TINY, {"data.source": "tartanair", "data.roots": [str(tmp_path)],
                                      "data.n_frames": 4, "data.height": 32, "data.width": 48})
    clip = data.ClipDataset(config.data, seed=0)[0]
    assert clip["images"].shape == (4, 3, 32, 48)
    assert torch.all(clip["frames"][1:] > clip["frames"][:-1])
    assert torch.all(clip["depths"] > 0)


@pytest.mark.parametrize("share", [-0.5, 2.0])
def test_low_texture_share_out_of_range_is_named(share):
    with pytest.raises(ConfigError, match=r"data.low_texture .*\[0, 1\]"):
        load_train_config(TINY, {"data.low_texture": share})


def test_low_texture_clip_differs_only_in_images(tiny_config):
    import dataclasses

    lowered = dataclasses.replace(tiny_config.data, low_texture=1.0)
    first = data.ClipDataset(tiny_config.data, seed=3)[2]
    second = data.ClipDataset(lowered, seed=3)[2]
    assert not torch.equal(first["images"], second["images"])
    for key in first:
        if key != "images":
            assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_reverse_share_out_of_range_is_named(share):
    with pytest.raises(ConfigError, match=r"data.reverse_p .*\[0, 1\]"):
        load_train_config(TINY, {"data.reverse_p": share})


def test_reversed_clip_is_the_forward_clip_backwards(tiny_config):
    import dataclasses

    backwards = dataclasses.replace(tiny_config.data, reverse_p=1.0)
    forward = data.ClipDataset(tiny_config.data, seed=4, augment=False)[1]
    reversed_clip = data.ClipDataset(backwards, seed=4, augment=False)[1]
    assert torch.all(reversed_clip["frames"][1:] < reversed_clip["frames"][:-1])
    for key in ("frames", "images", "depths", "poses_cw"):
        assert torch.equal(reversed_clip[key], forward[key].flip(0)), key
    assert torch.equal(reversed_clip["intrinsics"], forward["intrinsics"])
    assert torch.equal(reversed_clip["scale"], forward["scale"])


def test_reverse_share_matches_probability(tmp_path):
    write_tartanair(tmp_path / "scene" / "P000", count=12)
    config = load_train_config(TINY, {"data.source": "tartanair", "data.roots": [str(tmp_path)],
                                      "data.n_frames": 4, "data.height": 32, "data.width": 48,
                                      "data.reverse_p": 0.5})
    dataset = data.ClipDataset(config.data, seed=0, augment=False)
    backwards = sum(bool(dataset[index]["frames"][0] > dataset[index]["frames"][-1])
                    for index in range(60))
    # Binomial(60, 0.5): 30 +- 3.9, so 15..45 fails by chance with probability below 1e-4.
    assert 15 <= backwards <= 45


def test_root_inside_evaluation_data_is_rejected(tmp_path, monkeypatch):
    evaluation = tmp_path / "evaluation"
    write_tartanair(evaluation / "P000", count=4)
    monkeypatch.setenv("VO_NODE_DATA", str(evaluation))
    with pytest.raises(DatasetError, match="reserved for evaluation"):
        data.discover_sequences("tartanair", [str(evaluation / "P000")])


def test_links_into_evaluation_data_are_rejected(tmp_path, monkeypatch):
    evaluation = write_tartanair(tmp_path / "evaluation" / "P000", count=4)
    monkeypatch.setenv("VO_NODE_DATA", str(tmp_path / "evaluation"))
    linked = tmp_path / "training" / "P000"
    (linked / "image_left").mkdir(parents=True)
    (linked / "depth_left").mkdir()
    for index in range(4):
        name = f"{index:06d}_left.png"
        (linked / "image_left" / name).symlink_to(evaluation / "image_left" / name)
        depth = f"{index:06d}_left_depth.npy"
        (linked / "depth_left" / depth).symlink_to(evaluation / "depth_left" / depth)
    (linked / "pose_left.txt").write_text((evaluation / "pose_left.txt").read_text())
    with pytest.raises(DatasetError, match="links into the evaluation data folder"):
        data.discover_sequences("tartanair", [str(tmp_path / "training")])


def test_separate_copy_is_accepted(tmp_path, monkeypatch):
    write_tartanair(tmp_path / "evaluation" / "P000", count=4)
    monkeypatch.setenv("VO_NODE_DATA", str(tmp_path / "evaluation"))
    write_tartanair(tmp_path / "training" / "P000", count=4)
    sequences = data.discover_sequences("tartanair", [str(tmp_path / "training")])
    assert len(sequences) == 1
    assert len(sequences[0]) == 4


def test_linked_sequence_folder_is_rejected(tmp_path, monkeypatch):
    evaluation = write_tartanair(tmp_path / "evaluation" / "P000", count=4)
    monkeypatch.setenv("VO_NODE_DATA", str(tmp_path / "evaluation"))
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "P000").symlink_to(evaluation, target_is_directory=True)
    try:
        sequences = data.discover_sequences("tartanair", [str(tmp_path / "training")])
    except DatasetError as error:
        assert "evaluation data folder" in str(error) or "no tartanair sequence" in str(error)
    else:
        pytest.fail(f"a linked evaluation folder was accepted: {[s.folder for s in sequences]}")
