"""Model zoo: weight-layer counts (the paper's counting), layer outputs, BatchNorm freezing, bf16.

The real configurations are only traced (``jax.eval_shape`` / ``jax.make_jaxpr``),
so nothing big is computed or compiled; the numerical checks run on narrow or
shallow versions of each architecture with the same kinds of layers and blocks.
Their variables are filled on the host with numpy (a jitted Flax ``init`` spends
seconds compiling the random initialisers on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi.models import MODELS, count_weight_layers, get_model, init_model, layer_outputs
from jsemi.models.base import layer_index_of_name
from jsemi.models.vit import default_patch_size
from jsemi.models.zoo import EXPECTED_WEIGHT_LAYERS, ZOO

REAL = sorted(EXPECTED_WEIGHT_LAYERS)
# Narrow / shallow versions for the numerical checks.
SMALL = {
    "alexnet": dict(widths=(8, 8, 8, 8, 8)),
    "vgg16": dict(cfg=(4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M"), hidden=16),
    "resnet18": dict(width=4),  # full depth: 21 weight layers
    "resnet50": dict(width=2, stage_sizes=(2, 1, 1, 1)),  # 1 + 5 * 3 + 4 shortcuts + 1 = 21
    "wrn34_10": dict(depth=10, widen_factor=2),  # 1 + 3 * 2 + 3 shortcuts + 1 = 11
    "vit_b": dict(dim=16, depth=2, heads=2, mlp_dim=32),  # 1 + 2 * 4 + 1 = 10
}
SMALL_N = {"alexnet": 6, "vgg16": 16, "resnet18": 21, "resnet50": 21, "wrn34_10": 11, "vit_b": 10}
WITH_BN = ["alexnet", "vgg16", "resnet18", "resnet50", "wrn34_10"]
IN32 = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)


def _key_name(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", k)))


def _index(path) -> int | None:
    """Deepest ``Lnn_`` key on a variable path (as jsemi.partition does)."""
    for k in reversed(path):
        i = layer_index_of_name(_key_name(k))
        if i is not None:
            return i
    return None


def _abstract_variables(model, hwc=(32, 32, 3)):
    return jax.eval_shape(lambda k: init_model(model, k, hwc), jax.random.key(0))


def _np_variables(model, seed=0):
    """Variables with the model's tree, filled on the host (He-scaled kernels, BN stats near 0/1)."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = _key_name(path[-1])
        if name == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            return jnp.asarray(rng.normal(0, np.sqrt(2.0 / fan_in), s.shape), jnp.float32)
        if name in ("scale", "var"):
            return jnp.asarray(rng.uniform(0.8, 1.2, s.shape), jnp.float32)
        return jnp.asarray(rng.normal(0, 0.05, s.shape), jnp.float32)  # bias, BN mean, cls, pos

    return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model))


def _x(shape=(2, 32, 32, 3), seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


_NUMERICS: dict = {}


def _numerics(name):
    """One compiled run per small model: eval outputs in f32 and bf16, a train step's BN update."""
    if name in _NUMERICS:
        return _NUMERICS[name]
    m32 = get_model(name, 10, **SMALL[name])
    m16 = get_model(name, 10, **SMALL[name], dtype=jnp.bfloat16)
    variables = _np_variables(m32)
    has_bn = "batch_stats" in variables

    @jax.jit
    def run(v, x):
        out = {"f32": layer_outputs(m32, v, x), "bf16": layer_outputs(m16, v, x)}
        if has_bn:
            _, st = m32.apply(v, x, train=True, frozen=(1, 2), mutable=["batch_stats", "intermediates"])
            out["frozen12"] = st
            _, st = m32.apply(v, x, train=True, mutable=["batch_stats", "intermediates"])
            out["train"] = st["intermediates"]
        return out

    _NUMERICS[name] = (m32, variables, run(variables, _x(seed=3)))
    return _NUMERICS[name]


# ----------------------------------------------------------------- registry and counts


def test_registry_has_every_zoo_model():
    for name in ZOO:
        assert name in MODELS and name == name.lower()
    with pytest.raises(ValueError, match="unknown model"):
        get_model("resnet19")


@pytest.mark.parametrize("name", REAL)
def test_real_config_weight_layer_counts(name):
    """The paper's counting: every conv and dense, shortcut convs included.

    VGG16 = 13 convs + 3 dense = 16.  ResNet-18 = stem + 16 block convs + 3 shortcut
    convs + fc = 21.  ResNet-50 = stem + 16 x 3 bottleneck convs + 4 shortcuts + fc
    = 54.  WRN-34-10: depth 34 = 6N + 4 gives N = 5 blocks in each of 3 groups, so
    stem + 30 block convs + fc = 32, plus the 3 shortcut 1x1 convs of the groups'
    first blocks (16 -> 160, 160 -> 320, 320 -> 640 channels) = 35.  ViT = patch
    embedding + 12 x (qkv, out, mlp1, mlp2) + head = 50.  AlexNet (CIFAR) = 5 convs
    + 1 dense = 6.  Traced only.
    """
    model = get_model(name, 10)
    variables = _abstract_variables(model)
    logits, outs = jax.eval_shape(lambda v, x: layer_outputs(model, v, x), variables, IN32)
    n = EXPECTED_WEIGHT_LAYERS[name]
    assert count_weight_layers(variables) == n == model.n_weight_layers == len(outs)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert outs[-1].shape == logits.shape
    # every variable (params and batch_stats) carries a weight-layer index (jsemi.partition needs it)
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        assert _index(path) is not None, jax.tree_util.keystr(path)
        assert leaf.dtype == jnp.float32


def test_named_counts_from_the_paper():
    assert get_model("vgg16").n_weight_layers == 16
    assert get_model("resnet18").n_weight_layers == 21
    assert get_model("wrn34_10").n_weight_layers == 35
    # widen factor 1: the first group keeps 16 channels, so it has no shortcut conv
    assert get_model("wrn34_10", widen_factor=1).n_weight_layers == 34
    assert get_model("resnet50").n_weight_layers == 54
    assert get_model("vit_b").n_weight_layers == 50


# ----------------------------------------------------------------- F(j) depends on layers 1..j


def _dependencies(jaxpr, in_masks):
    """Bit masks of the inputs each output of ``jaxpr`` depends on (data flow, sub-jaxprs followed)."""
    env = {}

    def read(a):
        return env.get(a, 0) if hasattr(a, "count") or not hasattr(a, "val") else 0

    for var, m in zip(jaxpr.invars, in_masks):
        env[var] = m
    for eqn in jaxpr.eqns:
        ins = [read(a) for a in eqn.invars]
        outs = None
        for p in eqn.params.values():
            sub = getattr(p, "jaxpr", None)
            if sub is not None and hasattr(sub, "eqns") and len(sub.invars) == len(ins):
                outs = _dependencies(sub, ins)
                break
        if outs is None:
            u = 0
            for m in ins:
                u |= m
            outs = [u] * len(eqn.outvars)
        for var, m in zip(eqn.outvars, outs):
            env[var] = m
    return [read(a) for a in jaxpr.outvars]


@pytest.mark.parametrize("name", REAL)
def test_layer_j_output_depends_on_layers_up_to_j_only(name):
    """F(j) reads the variables (params and BN statistics) of layers 1..j, layer j's included, and no later ones.

    So fa = layers 1..a is a self-contained subnetwork: freezing it fixes F(a)
    (a ResNet/WRN shortcut conv is numbered before the conv its output is added to).
    Checked on the data flow of the traced real network; nothing is computed.
    """
    model = get_model(name, 10)
    variables = _abstract_variables(model)
    leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
    masks = [1 << _index(p) for p, _ in leaves]
    closed = jax.make_jaxpr(lambda v, x: layer_outputs(model, v, x)[1])(variables, IN32)
    deps = _dependencies(closed.jaxpr, masks + [0])  # the input x carries no layer bit
    assert len(deps) == model.n_weight_layers
    for j, d in enumerate(deps, start=1):
        layers = {i for i in range(1, model.n_weight_layers + 1) if d >> i & 1}
        assert j in layers, f"output of layer {j} does not read layer {j}'s variables"
        assert max(layers) == j, f"output of layer {j} reads layers {sorted(i for i in layers if i > j)}"


# ----------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3), (2, 64, 64, 3)])
@pytest.mark.parametrize("name", REAL)
def test_input_sizes(name, shape):
    model = get_model(name, 10)
    variables = _abstract_variables(model, shape[1:])
    logits, outs = jax.eval_shape(
        lambda v, x: layer_outputs(model, v, x), variables, jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    assert logits.shape == (2, 10) and len(outs) == model.n_weight_layers
    assert all(o.shape[0] == 2 and all(d > 0 for d in o.shape) for o in outs)


def test_vit_patch_size_from_input():
    assert default_patch_size(32, 32) == 4 and default_patch_size(64, 64) == 8 and default_patch_size(28, 28) == 4
    model = get_model("vit_b", 10, **SMALL["vit_b"])
    for side, tokens in ((32, 65), (64, 65), (28, 50)):
        v = _abstract_variables(model, (side, side, 3))
        _, outs = jax.eval_shape(lambda v, x: layer_outputs(model, v, x), v, jnp.zeros((1, side, side, 3)))
        assert outs[0].shape == (1, tokens, 16)
    v = _abstract_variables(get_model("vit_b", 10, patch_size=2, **SMALL["vit_b"]))
    assert v["params"]["L01_embed"]["pos"].shape == (1, 257, 16)


def test_flax_init_runs():
    model = get_model("alexnet", 10, **SMALL["alexnet"])
    variables, logits = jax.jit(
        lambda k, x: (v := init_model(model, k, (32, 32, 3)), model.apply(v, x, train=False))
    )(jax.random.key(0), _x())
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(_abstract_variables(model))
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


# ----------------------------------------------------------------- numerics on small configs


@pytest.mark.parametrize("name", sorted(SMALL))
def test_layer_outputs_in_order_last_is_logits(name):
    model, variables, res = _numerics(name)
    logits, outs = res["f32"]
    assert model.n_weight_layers == SMALL_N[name] == count_weight_layers(variables) == len(outs)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(outs[-1]), np.asarray(logits))
    for o in outs:
        assert o.shape[0] == 2 and bool(jnp.all(jnp.isfinite(o)))


@pytest.mark.parametrize("name", WITH_BN)
def test_frozen_layers_keep_batch_stats(name):
    _, variables, res = _numerics(name)
    before, after = variables["batch_stats"], res["frozen12"]["batch_stats"]
    assert set(before) == set(after) and {"L01_bn", "L02_bn"} <= set(before)
    for key in before:
        same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree_util.tree_leaves(before[key]), jax.tree_util.tree_leaves(after[key])))
        if layer_index_of_name(key) in (1, 2):
            assert same, f"frozen {key} changed"
        else:
            assert not same, f"trainable {key} did not update"


@pytest.mark.parametrize("name", WITH_BN)
def test_frozen_layers_normalise_with_running_stats(name):
    """train=True with layers 1, 2 frozen: their outputs are the eval-mode ones; unfrozen differ."""
    _, _, res = _numerics(name)
    _, evals = res["f32"]
    frozen, train = res["frozen12"]["intermediates"], res["train"]
    for j in (1, 2):
        np.testing.assert_allclose(np.asarray(frozen[f"L{j:02d}"]), np.asarray(evals[j - 1]), rtol=1e-5, atol=1e-5)
        assert not np.allclose(np.asarray(train[f"L{j:02d}"]), np.asarray(evals[j - 1]), atol=1e-3)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bfloat16_compute_float32_params_and_logits(name):
    _, _, res = _numerics(name)
    l32, _ = res["f32"]
    l16, outs16 = res["bf16"]
    m16 = get_model(name, 10, **SMALL[name], dtype=jnp.bfloat16)
    for leaf in jax.tree_util.tree_leaves(_abstract_variables(m16)):
        assert leaf.dtype == jnp.float32
    assert l16.dtype == jnp.float32 and outs16[0].dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(l32)))
    err = float(jnp.max(jnp.abs(l16 - l32)))
    assert err <= 0.05 * scale + 1e-2, (err, scale)


# ----------------------------------------------------------------- parity with PyTorch (slow, needs torch)


def _torch_reference_architectures(torch):
    """ResNet-18/50, VGG16-BN and ViT written out in PyTorch from their papers (He et al. 2016,
    Simonyan & Zisserman 2015 with BatchNorm, Dosovitskiy et al. 2021), with torchvision's
    attribute names and layer order so the same weight placement serves both.  Used when
    torchvision cannot be imported; an independent reference either way (not jsemi code)."""
    import types

    nn = torch.nn

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, width, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
            self.downsample = None
            if stride != 1 or cin != width:
                self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

        def forward(self, x):
            h = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(h + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, width, stride):
            super().__init__()
            out = width * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
            self.downsample = None
            if stride != 1 or cin != out:
                self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            h = torch.relu(self.bn2(self.conv2(h)))
            h = self.bn3(self.conv3(h))
            return torch.relu(h + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self, block, counts, num_classes):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, stages = 64, []
            for i, (width, count) in enumerate(zip((64, 128, 256, 512), counts)):
                blocks = []
                for b in range(count):
                    blocks.append(block(cin, width, 2 if (b == 0 and i > 0) else 1))
                    cin = width * block.expansion
                stages.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class VGG(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            layers, cin = [], 3
            for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(cin, v, 3, 1, 1), nn.BatchNorm2d(v), nn.ReLU()]
                    cin = v
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(7)
            self.classifier = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
                                            nn.ReLU(), nn.Dropout(), nn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    class EncoderBlock(nn.Module):
        def __init__(self, heads, dim, mlp_dim):
            super().__init__()
            self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
            self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim),
                                     nn.Dropout(0.0))

        def forward(self, x):
            h = self.ln_1(x)
            x = x + self.self_attention(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    class VisionTransformer(nn.Module):
        def __init__(self, image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes=1000):
            super().__init__()
            self.patch_size, self.hidden_dim = patch_size, hidden_dim
            self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, patch_size)
            self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
            tokens = (image_size // patch_size) ** 2 + 1
            self.encoder = nn.Module()
            self.encoder.pos_embedding = nn.Parameter(torch.empty(1, tokens, hidden_dim).normal_(std=0.02))
            self.encoder.layers = nn.Sequential(*[EncoderBlock(num_heads, hidden_dim, mlp_dim) for _ in range(num_layers)])
            self.encoder.ln = nn.LayerNorm(hidden_dim, eps=1e-6)
            self.heads = nn.Module()
            self.heads.head = nn.Linear(hidden_dim, num_classes)

        def forward(self, x):
            x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (N, patches, D), patches in row-major order
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.encoder.pos_embedding
            x = self.encoder.ln(self.encoder.layers(x))
            return self.heads.head(x[:, 0])

    return types.SimpleNamespace(
        resnet18=lambda num_classes: ResNet(Basic, (2, 2, 2, 2), num_classes),
        resnet50=lambda num_classes: ResNet(Bottleneck, (3, 4, 6, 3), num_classes),
        vgg16_bn=lambda num_classes: VGG(num_classes),
        VisionTransformer=VisionTransformer,
    )


def _torch_parity_cases():
    """(name, flax model, torch model, variables builder) for small configs; torch built on demand."""
    torch = pytest.importorskip("torch")
    try:
        import torchvision as tv
    except Exception:  # absent, or a CUDA build beside a CPU torch: the test's own definitions
        tv = None
    tnn = torch.nn
    ref = _torch_reference_architectures(torch)
    torch.manual_seed(0)

    def conv_k(m):
        return m.weight.detach().numpy().transpose(2, 3, 1, 0)

    def lin_k(m):
        return m.weight.detach().numpy().T

    def put_conv(v, j, m):
        p = {"kernel": conv_k(m)}
        if m.bias is not None:
            p["bias"] = m.bias.detach().numpy()
        v["params"][f"L{j:02d}_conv"] = p

    def put_bn(v, j, bn, conv_bias=None):
        mean = bn.running_mean.numpy() - (0 if conv_bias is None else conv_bias.detach().numpy())
        v["params"][f"L{j:02d}_bn"] = {"scale": bn.weight.detach().numpy(), "bias": bn.bias.detach().numpy()}
        v["batch_stats"][f"L{j:02d}_bn"] = {"mean": mean, "var": bn.running_var.numpy()}

    def put_dense(v, j, m):
        v["params"][f"L{j:02d}_dense"] = {"kernel": lin_k(m), "bias": m.bias.detach().numpy()}

    def randomise(model):
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, (tnn.BatchNorm2d, tnn.LayerNorm)):
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.normal_(0, 0.2)
                if isinstance(mod, tnn.BatchNorm2d):
                    mod.running_mean.normal_(0, 0.2)
                    mod.running_var.uniform_(0.5, 1.5)
                if isinstance(mod, tnn.Linear):
                    mod.weight.normal_(0, 1 / np.sqrt(mod.in_features))
                    mod.bias.normal_(0, 0.1)
        return model.eval()

    def resnet(name, bottleneck):
        models = tv.models if tv is not None else ref
        t = (models.resnet50 if bottleneck else models.resnet18)(num_classes=10)
        t.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
        t.maxpool = tnn.Identity()
        randomise(t)
        v = {"params": {}, "batch_stats": {}}
        put_conv(v, 1, t.conv1), put_bn(v, 1, t.bn1)
        j = 1
        for layer in (t.layer1, t.layer2, t.layer3, t.layer4):
            for blk in layer:
                pairs = [(blk.conv1, blk.bn1), (blk.conv2, blk.bn2)] if bottleneck else [(blk.conv1, blk.bn1)]
                for c, b in pairs:
                    j += 1
                    put_conv(v, j, c), put_bn(v, j, b)
                if blk.downsample is not None:
                    j += 1
                    put_conv(v, j, blk.downsample[0]), put_bn(v, j, blk.downsample[1])
                last = (blk.conv3, blk.bn3) if bottleneck else (blk.conv2, blk.bn2)
                j += 1
                put_conv(v, j, last[0]), put_bn(v, j, last[1])
        put_dense(v, j + 1, t.fc)
        return get_model(name, 10), t, v

    def vgg():
        t = (tv.models if tv is not None else ref).vgg16_bn(num_classes=10)
        t.avgpool = tnn.AdaptiveAvgPool2d(1)
        t.classifier[0] = tnn.Linear(512, 4096)
        randomise(t)
        v = {"params": {}, "batch_stats": {}}
        convs = [m for m in t.features if isinstance(m, tnn.Conv2d)]
        bns = [m for m in t.features if isinstance(m, tnn.BatchNorm2d)]
        for j, (c, b) in enumerate(zip(convs, bns), start=1):
            v["params"][f"L{j:02d}_conv"] = {"kernel": conv_k(c)}  # conv bias folded into the BN mean
            put_bn(v, j, b, conv_bias=c.bias)
        for j, m in zip((14, 15, 16), (t.classifier[0], t.classifier[3], t.classifier[6])):
            put_dense(v, j, m)
        return get_model("vgg16", 10), t, v

    def alexnet():
        spec = [(3, 64, 11, 4, 5, True), (64, 192, 5, 1, 2, True), (192, 384, 3, 1, 1, False),
                (384, 256, 3, 1, 1, False), (256, 256, 3, 1, 1, True)]
        layers = []
        for cin, cout, k, s, p, pool in spec:
            layers += [tnn.Conv2d(cin, cout, k, s, p), tnn.ReLU()] + ([tnn.MaxPool2d(2, 2)] if pool else [])
        t = randomise(tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(256, 10)))
        v = {"params": {}}
        for j, c in enumerate([m for m in t if isinstance(m, tnn.Conv2d)], start=1):
            put_conv(v, j, c)
        put_dense(v, 6, t[-1])
        return get_model("alexnet", 10, use_bn=False), t, v

    class PreActBlock(tnn.Module):  # written from the WRN paper's description (pre-activation)
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1, self.conv1 = tnn.BatchNorm2d(cin), tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2, self.conv2 = tnn.BatchNorm2d(cout), tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.equal = cin == cout and stride == 1
            self.short = None if self.equal else tnn.Conv2d(cin, cout, 1, stride, 0, bias=False)

        def forward(self, x):
            a = torch.relu(self.bn1(x))
            h = self.conv2(torch.relu(self.bn2(self.conv1(a))))
            return (x if self.equal else self.short(a)) + h

    def wrn():
        depth, k = 10, 2
        blocks, cin = [], 16
        for g, base in enumerate((16, 32, 64)):
            blocks.append(PreActBlock(cin, base * k, 1 if g == 0 else 2))
            cin = base * k
        t = randomise(tnn.Sequential(tnn.Conv2d(3, 16, 3, 1, 1, bias=False), *blocks, tnn.BatchNorm2d(cin),
                                     tnn.ReLU(), tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, 10)))
        v = {"params": {}, "batch_stats": {}}
        put_conv(v, 1, t[0])
        j, out_bn = 1, blocks[0].bn1
        for i, blk in enumerate(blocks):
            put_bn(v, j, blk.bn1)  # a block's bn1 belongs to the layer that produced its input
            j += 1
            put_conv(v, j, blk.conv1), put_bn(v, j, blk.bn2)
            if blk.short is not None:
                j += 1
                put_conv(v, j, blk.short)
            j += 1
            put_conv(v, j, blk.conv2)
        put_bn(v, j, t[len(blocks) + 1])
        put_dense(v, j + 1, t[-1])
        return get_model("wrn34_10", 10, depth=depth, widen_factor=k), t, v

    def vit():
        if tv is not None:
            from torchvision.models.vision_transformer import VisionTransformer
        else:
            VisionTransformer = ref.VisionTransformer
        kw = SMALL["vit_b"]
        t = VisionTransformer(32, 4, kw["depth"], kw["heads"], kw["dim"], kw["mlp_dim"], num_classes=10)
        randomise(t)
        with torch.no_grad():
            t.class_token.normal_(0, 0.5)
        g = lambda a: a.detach().numpy()
        v = {"params": {}}
        put_conv(v, 1, t.conv_proj)
        v["params"]["L01_embed"] = {"cls": g(t.class_token), "pos": g(t.encoder.pos_embedding)}
        ln = lambda m: {"scale": g(m.weight), "bias": g(m.bias)}
        j = 1
        for blk in t.encoder.layers:
            at = blk.self_attention
            v["params"][f"L{j:02d}_ln"] = ln(blk.ln_1)
            v["params"][f"L{j + 1:02d}_dense"] = {"kernel": g(at.in_proj_weight).T, "bias": g(at.in_proj_bias)}
            put_dense(v, j + 2, at.out_proj)
            v["params"][f"L{j + 2:02d}_ln"] = ln(blk.ln_2)
            put_dense(v, j + 3, blk.mlp[0]), put_dense(v, j + 4, blk.mlp[3])
            j += 4
        v["params"][f"L{j:02d}_ln"] = ln(t.encoder.ln)
        put_dense(v, j + 1, t.heads.head)
        return get_model("vit_b", 10, **kw), t, v

    return torch, {
        "resnet18": lambda: resnet("resnet18", False),
        "resnet50": lambda: resnet("resnet50", True),
        "vgg16": vgg,
        "alexnet": alexnet,
        "wrn34_10": wrn,
        "vit_b": vit,
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "vgg16", "resnet18", "resnet50", "wrn34_10", "vit_b"])
def test_matches_pytorch_reference(name):
    """Same weights, same logits as the PyTorch architectures (torchvision's ResNet-18/50 with the
    CIFAR stem, VGG16-BN with a 512-input classifier and VisionTransformer, or, without a usable
    torchvision, the same architectures written out in the test; AlexNet and the
    pre-activation WRN written out in torch).  Checks the layer numbering too: the
    weights are placed by our ``Lnn_`` names.  Eval mode, float32, on CPU."""
    torch, cases = _torch_parity_cases()
    model, tmodel, v = cases[name]()
    # every flax variable was filled, with the right shapes
    ref = _abstract_variables(model)
    assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(v)
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(v)):
        assert tuple(a.shape) == tuple(np.shape(b))
    x = np.asarray(_x((4, 32, 32, 3), seed=7))
    mean, std = np.asarray(model.mean, np.float32), np.asarray(model.std, np.float32)
    with torch.no_grad():
        want = tmodel(torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2).copy())).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(jax.tree_util.tree_map(jnp.asarray, v), x))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.max(np.abs(want))))
