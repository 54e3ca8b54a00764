"""StackMFF-V2: a state-dict-compatible implementation, written from the paper
and ``shared/specs/stackmff_v2.md``.

Three stages:

1. intra-layer focus estimation (``feature_extraction``): a small U-Net applied to every plane on
   its own -> an 8-channel focus probability volume ``(B, N, 8, H, W)``;
2. inter-layer focus estimation (``layer_interaction``): a bidirectional ConvGRU (hidden 16)
   along the planes, max over the hidden channels -> focus logits ``(B, N, H, W)``;
3. focus-map regression (no parameters, :func:`regress`): softmax over planes, then a decision
   rule (the official expectation + global min-max, or a local argmax).

``StackMFFV2.forward`` is differentiable (training); :meth:`StackMFFV2.infer_logits` is the
inference path: no autograd, planes in chunks through stage 1, and the recurrent pass with its
16-channel forward states checkpointed every ~sqrt(N) planes when keeping all N would exceed a
memory budget (and in exact-halo row strips for worker threads). Both give the same logits to
float32 round-off.

torch is imported by this module: import it lazily (only torch methods and training do).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: channel widths of the intra-layer U-Net
CHANNELS = (8, 16, 24, 32, 48, 64)
HIDDEN = 16
FEATURES = 8
#: H and W must be multiples of this (five 2x poolings)
MULTIPLE = 32


# --------------------------------------------------------------------------------------------
# stage 1: intra-layer focus estimation
# --------------------------------------------------------------------------------------------
class InceptionDW(nn.Module):
    """1x1 channel adjustment, then depthwise 3x3 / 1x11 / 11x1 convs on three small slices."""

    def __init__(self, cin: int, cout: int, square: int = 3, band: int = 11, ratio: float = 1 / 8):
        super().__init__()
        g = max(1, int(cout * ratio))
        self.split = (cout - 3 * g, g, g, g)
        self.channel_adj = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.dwconv_hw = nn.Conv2d(g, g, square, padding=square // 2, groups=g)
        self.dwconv_w = nn.Conv2d(g, g, (1, band), padding=(0, band // 2), groups=g)
        self.dwconv_h = nn.Conv2d(g, g, (band, 1), padding=(band // 2, 0), groups=g)

    def forward(self, x):
        x = self.channel_adj(x)
        keep, a, b, c = torch.split(x, self.split, dim=1)
        return torch.cat((keep, self.dwconv_hw(a), self.dwconv_w(b), self.dwconv_h(c)), dim=1)


class SpatialBridge(nn.Module):
    """One 7x7 (dilation 3) conv on [channel mean, channel max], shared by every scale."""

    def __init__(self):
        super().__init__()
        self.shared_conv2d = nn.Sequential(nn.Conv2d(2, 1, 7, padding=9, dilation=3), nn.Sigmoid())

    def forward(self, ts):
        out = []
        for t in ts:
            stat = torch.cat((t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)), dim=1)
            out.append(self.shared_conv2d(stat))
        return out


class ChannelBridge(nn.Module):
    """Global average pool of every scale -> 1D conv over the joined vector -> one FC per scale."""

    def __init__(self, widths=CHANNELS[:5]):
        super().__init__()
        total = sum(widths)
        self.get_all_att = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        for i, w in enumerate(widths, 1):
            setattr(self, f"att{i}", nn.Linear(total, w))
        self.n = len(widths)

    def forward(self, ts):
        pooled = torch.cat([t.mean(dim=(2, 3)) for t in ts], dim=1)  # (B, 128)
        joint = self.get_all_att(pooled[:, None, :])[:, 0, :]  # (B, 128)
        return [torch.sigmoid(getattr(self, f"att{i}")(joint))[:, :, None, None] for i in range(1, self.n + 1)]


class AttentionBridge(nn.Module):
    """Spatial then channel attention on the five skip tensors (scab)."""

    def __init__(self):
        super().__init__()
        self.catt = ChannelBridge()
        self.satt = SpatialBridge()

    def forward(self, ts):
        spatial = [a * t for a, t in zip(self.satt(ts), ts)]
        mixed = [s + t for s, t in zip(spatial, ts)]
        return [c * m + s for c, m, s in zip(self.catt(mixed), mixed, spatial)]


class IntraLayer(nn.Module):
    """ULDA-Net: (P, 1, H, W) planes -> (P, 8, H, W) focus probabilities (sigmoid)."""

    def __init__(self):
        super().__init__()
        c = CHANNELS
        self.encoder1 = nn.Sequential(nn.Conv2d(1, c[0], 3, padding=1))
        for k in range(1, 6):
            setattr(self, f"encoder{k + 1}", nn.Sequential(InceptionDW(c[k - 1], c[k])))
        for k in range(1, 6):
            setattr(self, f"decoder{k}", nn.Sequential(InceptionDW(c[6 - k], c[5 - k])))
        self.scab = AttentionBridge()
        for k in range(1, 6):
            setattr(self, f"ebn{k}", nn.GroupNorm(4, c[k - 1]))
            setattr(self, f"dbn{k}", nn.GroupNorm(4, c[5 - k]))
        self.final = nn.Conv2d(c[0], FEATURES, 1)

    def forward(self, x):
        skips = []
        out = x
        for k in range(1, 6):
            enc = getattr(self, f"encoder{k}")
            norm = getattr(self, f"ebn{k}")
            out = F.gelu(_pool2(norm(enc(out))))
            skips.append(out)
        bottom = F.gelu(self.encoder6(out))
        skips = self.scab(skips)
        out = F.gelu(self.dbn1(self.decoder1(bottom))) + skips[4]
        for k in range(2, 6):
            y = getattr(self, f"dbn{k}")(getattr(self, f"decoder{k}")(out))
            out = F.gelu(_up2(y)) + skips[5 - k]
        return torch.sigmoid(_up2(self.final(out)))


def _pool2(x):
    """2x2 max pooling; as the max of four strided views (equal values, several times faster
    than ``max_pool2d`` on CPU, in either memory format)."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        return F.max_pool2d(x, 2)
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 1::2, 0::2]),
                         torch.maximum(x[..., 0::2, 1::2], x[..., 1::2, 1::2]))


def _up2(x):
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------------------------
# stage 2: inter-layer focus estimation (bidirectional ConvGRU)
# --------------------------------------------------------------------------------------------
class ConvGRUCell(nn.Module):
    """A ConvGRU cell whose parameters match the official ``conv_gates`` / ``conv_can``.

    The convolutions act on ``cat[x, h]``; they are applied here as an x part plus an h part
    (:meth:`split_weights`), so the x part can be computed for every plane at once and no
    concatenation happens per step.
    """

    def __init__(self, cin: int = FEATURES, hidden: int = HIDDEN, k: int = 3):
        super().__init__()
        self.cin, self.hidden, self.k = cin, hidden, k
        self.conv_gates = nn.Conv2d(cin + hidden, 2 * hidden, k, padding=k // 2)
        self.conv_can = nn.Conv2d(cin + hidden, hidden, k, padding=k // 2)

    def split_weights(self):
        """(x weights (3h, cin, k, k), bias (3h,), h->gates (2h, h, k, k), h->cand (h, h, k, k))."""
        c = self.cin
        wx = torch.cat((self.conv_gates.weight[:, :c], self.conv_can.weight[:, :c]), dim=0)
        bx = torch.cat((self.conv_gates.bias, self.conv_can.bias), dim=0)
        return wx, bx, self.conv_gates.weight[:, c:], self.conv_can.weight[:, c:]


def gru_direction(xconv, wh_g, wh_c, hidden: int, order, h=None):
    """Run one direction. ``xconv``: (N, P, 3h, H, W) precomputed x part (bias included).

    Yields (n, h_n) in ``order``. Autograd-friendly (no in-place ops on tensors it needs).
    """
    pad = wh_g.shape[-1] // 2
    for n in order:
        xg = xconv[n]
        if h is None:  # h = 0: the h-part convolutions vanish
            z = torch.sigmoid(xg[:, hidden : 2 * hidden])
            h = z * torch.tanh(xg[:, 2 * hidden :])
        else:
            g = xg[:, : 2 * hidden] + F.conv2d(h, wh_g, padding=pad)
            r = torch.sigmoid(g[:, :hidden])
            z = torch.sigmoid(g[:, hidden:])
            cand = torch.tanh(xg[:, 2 * hidden :] + F.conv2d(r * h, wh_c, padding=pad))
            h = h + z * (cand - h)
        yield n, h


class BiConvGRU(nn.Module):
    def __init__(self, cin: int = FEATURES, hidden: int = HIDDEN, k: int = 3):
        super().__init__()
        self.hidden = hidden
        self.forward_cell_list = nn.ModuleList([ConvGRUCell(cin, hidden, k)])
        self.backward_cell_list = nn.ModuleList([ConvGRUCell(cin, hidden, k)])

    def xconv(self, feats):
        """feats (B, N, C, H, W) -> forward and backward x parts, each (N, B, 3h, H, W)."""
        B, N, C, H, W = feats.shape
        wf, bf, _, _ = self.forward_cell_list[0].split_weights()
        wb, bb, _, _ = self.backward_cell_list[0].split_weights()
        w = torch.cat((wf, wb), dim=0)
        b = torch.cat((bf, bb), dim=0)
        flat = feats.transpose(0, 1).reshape(N * B, C, H, W)
        xc = F.conv2d(flat, w, b, padding=w.shape[-1] // 2).reshape(N, B, 2, 3 * self.hidden, H, W)
        return xc[:, :, 0], xc[:, :, 1]

    def forward(self, feats):
        """(B, N, 8, H, W) -> (B, N, H, W) logits = max over channels of h_fwd + h_bwd."""
        N = feats.shape[1]
        xf, xb = self.xconv(feats)
        _, _, whg_f, whc_f = self.forward_cell_list[0].split_weights()
        _, _, whg_b, whc_b = self.backward_cell_list[0].split_weights()
        hf = [h for _, h in gru_direction(xf, whg_f, whc_f, self.hidden, range(N))]
        out = [None] * N
        for n, h in gru_direction(xb, whg_b, whc_b, self.hidden, range(N - 1, -1, -1)):
            out[n] = (hf[n] + h).amax(dim=1)
        return torch.stack(out, dim=1)


class InterLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer_interaction_depth = BiConvGRU()

    def forward(self, feats):
        return self.layer_interaction_depth(feats)


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------
class StackMFFV2(nn.Module):
    """StackMFF-V2: ``forward(x (B, N, H, W) in [0, 1]) -> focus logits (B, N, H, W)``.

    H and W should be multiples of 32; other sizes are reflection-padded to the next multiple
    and the logits cropped back (the official code resizes instead).
    """

    def __init__(self):
        super().__init__()
        self.feature_extraction = IntraLayer()
        self.layer_interaction = InterLayer()

    # -- training / reference path ------------------------------------------------------------
    def intra(self, x):
        """(B, N, H, W) -> (B, N, 8, H, W) intra-layer focus probabilities."""
        B, N, H, W = x.shape
        p = self.feature_extraction(x.reshape(B * N, 1, H, W))
        return p.reshape(B, N, FEATURES, H, W)

    def forward(self, x):
        x, crop = pad_to_multiple(x)
        logits = self.layer_interaction(self.intra(x))
        return logits[..., : crop[0], : crop[1]]

    def stages(self, x) -> dict:
        """Intermediate tensors, named as in the reference file (H, W multiples of 32)."""
        probs = self.intra(x)
        logits = self.layer_interaction(probs)
        return {"intra_layer_probs": probs, "inter_layer_logits": logits}

    # -- inference path -------------------------------------------------------------------------
    @torch.inference_mode()
    def infer_logits(self, x, *, plane_chunk: int = 1, strip_budget: int = 512 << 20,
                     channels_last: bool | None = None, workers: int | None = None):
        """Logits of a (N, H, W) or (1, N, H, W) stack, with bounded working memory.

        Stage 1 runs ``plane_chunk`` planes at a time (GroupNorm needs whole planes); its
        8-channel output is the only per-plane volume kept besides the logits. The recurrent
        pass walks the planes in row chunks that stay in cache; when its stored hidden states
        (16 channels per plane) would exceed ``strip_budget`` bytes, it keeps checkpoints every
        ~sqrt(N) planes instead and recomputes the rest (see :meth:`_recurrent`).

        On the CPU, ``workers`` threads (default: torch's thread count) each run single-threaded
        torch on their own planes (stage 1) and row strips (stage 2, exact halo) instead of
        torch's intra-op threads. The recurrent pass is thousands of small ops; with intra-op
        threads each one ends in a barrier, which on a loaded machine (more runnable threads than
        cores) measured 25x slower than this, while unloaded both run at the same speed.
        """
        if x.ndim == 3:
            x = x[None]
        if x.shape[0] != 1:
            return torch.cat([self.infer_logits(xi, plane_chunk=plane_chunk, strip_budget=strip_budget,
                                                channels_last=channels_last, workers=workers) for xi in x])
        x, crop = pad_to_multiple(x)
        _, N, H, W = x.shape
        cpu = x.device.type == "cpu"
        cl = cpu if channels_last is None else channels_last
        fmt = torch.channels_last if cl else torch.contiguous_format
        nw = max(1, int(workers or torch.get_num_threads())) if cpu else 1
        with _single_threaded(nw > 1):
            # stage 1 writes into a buffer with 2 zero rows above and below (the recurrent pass's padding)
            fp = _row_padded((N, FEATURES, H, W), x, fmt)

            def intra(s):
                with torch.inference_mode():
                    e = min(N, s + plane_chunk)
                    fp[s:e, :, 2 : H + 2] = self.feature_extraction(x[0, s:e, None].contiguous(memory_format=fmt))

            _run(intra, range(0, N, plane_chunk), nw)
            logits = self._recurrent(fp, strip_budget, fmt, nw)
        return logits[None, :, : crop[0], : crop[1]]

    @torch.inference_mode()
    def infer_recurrent(self, feats, *, strip_budget: int = 512 << 20, channels_last: bool = True,
                        workers: int = 1, segment: int | None = None):
        """(N, 8, H, W) intra-layer probabilities -> (N, H, W) logits (inference path)."""
        N, C, H, W = feats.shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        fp = _row_padded((N, C, H, W), feats, fmt)
        fp[:, :, 2 : H + 2] = feats
        with _single_threaded(workers > 1):
            return self._recurrent(fp, strip_budget, fmt, workers, segment)

    def _recurrent(self, fp, strip_budget, fmt, workers: int = 1, segment: int | None = None):
        """Recurrent pass over (N, 8, H + 4, W) row-padded features: (N, H, W) logits.

        Memory: keeping every plane's 16-channel forward state costs 64 B per voxel. When that
        does not fit ``strip_budget``, either the rows run in narrower exact-halo strips (cheap
        while the strips stay several halos tall, i.e. few planes) or the forward states are
        checkpointed: only the state at the end of every segment of ``k = ceil(sqrt(N))`` planes
        is kept, and each segment is recomputed from its checkpoint just before the backward pass
        walks it (about 2 sqrt(N) states instead of N, for up to one more forward pass; bitwise
        the same logits). Whichever recomputes fewer rows is chosen; the strips' halo grows with
        N, so many planes always checkpoint. ``segment`` forces a segment length (tests).

        Parallelism: when every state fits, two workers run the two directions at once
        (:func:`_recurrent_two_way`; more workers: one row strip per pair). Otherwise the rows
        are split into one strip per worker. Strips carry an exact halo of 2N + 2 rows (a
        recurrent step reaches 2 rows further: a 3x3 conv on h, then one on r * h), so they equal
        the whole image to round-off, but the halo rows are computed twice: 7% more rows for
        8 planes in 2 strips of 256, 26% for 32 planes. Strips are also the last resort when even
        the checkpointed states of one strip exceed the budget.
        """
        N, C, H4, W = fp.shape
        H = H4 - 4
        gru = self.layer_interaction.layer_interaction_depth
        hid = gru.hidden
        cells = []
        for cell in (gru.forward_cell_list[0], gru.backward_cell_list[0]):
            wx, bx, whg, whc = cell.split_weights()
            cells.append((wx.contiguous(memory_format=fmt), bx, whg.contiguous(memory_format=fmt),
                          whc.contiguous(memory_format=fmt)))
        halo = 2 * N + 2
        state_row = hid * W * fp.element_size()  # one state, one row
        out = torch.empty((N, H, W), dtype=fp.dtype, device=fp.device)
        pairs = workers // 2
        if segment is None and pairs and fp.device.type == "cpu":  # the two directions in parallel
            rows = H if pairs <= 1 else min(H, max(2 * halo, -(-H // pairs)))
            window = min(H, rows + 2 * halo) if rows < H else H
            if (N + 4) * state_row * window * pairs <= strip_budget:

                def two_way(s):
                    y0, y1, a, b = s
                    with torch.inference_mode():
                        res = _recurrent_two_way(fp[:, :, a : b + 4], cells, hid, fmt)
                        out[:, y0:y1] = res[:, y0 - a : y1 - a]

                _run(two_way, list(_strips(H, rows, halo)), pairs)
                return out
        rows = H if workers <= 1 else min(H, max(2 * halo, -(-H // workers)))
        window = min(H, rows + 2 * halo) if rows < H else H
        if segment is None and N * state_row * window * workers > strip_budget:
            # narrower strips holding every state, or checkpoints: whichever recomputes less
            k = math.ceil(math.sqrt(N))
            narrow = int(strip_budget // max(1, N * state_row * workers)) - 2 * halo  # + halos = budget
            cost_strips = (narrow + 2 * halo) / narrow if narrow >= max(32, 2 * halo) else math.inf
            last = N - (math.ceil(N / k) - 1) * k  # the last segment is not recomputed
            cost_ckpt = window / rows * (3 * N - last) / (2 * N) if _held_states(N, k) < N else math.inf
            if cost_ckpt < cost_strips:
                segment = k
            else:  # (neither fits the budget: the narrowest sensible strips, every state held)
                rows = min(rows, narrow if narrow >= max(32, 2 * halo) else max(32, 2 * halo))
        elif segment is not None and segment >= N:
            segment = None
        if segment is not None:
            held = _held_states(N, segment)
            if held * state_row * window * workers > strip_budget:  # strips even so
                rows = min(rows, max(32, 4 * halo, int(strip_budget // max(1, held * state_row * workers))))

        def strip(s):
            y0, y1, a, b = s
            with torch.inference_mode():
                res = _recurrent_rows(fp[:, :, a : b + 4], cells, hid, fmt, segment)
                out[:, y0:y1] = res[:, y0 - a : y1 - a]

        _run(strip, list(_strips(H, rows, halo)), workers)
        return out


def _held_states(n: int, segment: int | None) -> int:
    """Forward states held at once by :func:`_recurrent_rows` (besides 4 working ones)."""
    if segment is None or segment >= n:
        return n
    return segment + math.ceil(n / segment) - 1


def _row_padded(shape, like, fmt):
    """An uninitialised (N, C, H + 4, W) tensor whose 2 rows above and below are zero."""
    N, C, H, W = shape
    t = torch.empty((N, C, H + 4, W), dtype=like.dtype, device=like.device, memory_format=fmt)
    t[:, :, :2] = 0
    t[:, :, H + 2 :] = 0
    return t


class _single_threaded:
    """Run torch single-threaded inside (when ``on``), restoring the thread count after."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        if self.on:
            self.n = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.on:
            torch.set_num_threads(self.n)


def _run(fn, items, workers: int) -> None:
    """``fn(item)`` for every item, in ``workers`` threads (torch releases the GIL in its ops)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for it in items:
            fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="stackmff") as pool:
        for f in [pool.submit(fn, it) for it in items]:
            f.result()


def _spans(fp) -> list[tuple[int, int]]:
    """The row chunks a recurrent step walks: on the CPU ~32k pixels (they stay in cache), on a
    GPU whole planes (fewer, larger kernels)."""
    H, W = fp.shape[2] - 4, fp.shape[3]
    chunk = max(8, 32768 // max(W, 1)) if fp.device.type == "cpu" else H
    return [(r0, min(H, r0 + chunk)) for r0 in range(0, H, chunk)]


def _step(fp, spans, hid: int, dst, prev, n: int, weights) -> None:
    """One ConvGRU step on row-padded buffers: ``dst`` = h_n from ``prev`` = h_{n-1} (None: zero).

    ``fp`` (N, C, h + 4, W) features and the (1, hid, h + 4, W) states keep 2 zero rows above and
    below, so each row chunk's convolutions read their neighbours without copies.
    """
    wx, bx, whg, whc = weights
    # (.float(): under autocast the convolutions run in half precision and the gates in float32,
    # into the float32 state buffers; without it .float() is the tensor itself)
    for r0, r1 in spans:
        xg = F.conv2d(fp[n : n + 1, :, r0 : r1 + 4], wx, bx, padding=(0, 1)).float()  # rows r0-1 .. r1+1
        if prev is None:  # h = 0: the h-part convolutions vanish (xg is scratch: in place)
            z = xg[:, hid : 2 * hid, 1:-1].sigmoid_()
            c = xg[:, 2 * hid :, 1:-1].mul_(2).sigmoid_().mul_(2).sub_(1)  # tanh
            torch.mul(c, z, out=dst[:, :, r0 + 2 : r1 + 2])
            continue
        hp = prev[:, :, r0 : r1 + 4]  # rows r0-2 .. r1+2 of h_{n-1} (zeros outside the image)
        g = F.conv2d(hp, whg, padding=(0, 1)).float()  # rows r0-1 .. r1+1
        g.add_(xg[:, : 2 * hid]).sigmoid_()  # [reset, update]
        c = F.conv2d(g[:, :hid] * hp[:, :, 1:-1], whc, padding=(0, 1)).float()  # rows r0 .. r1
        c.add_(xg[:, 2 * hid :, 1:-1]).mul_(2).sigmoid_().mul_(2).sub_(1)  # tanh = 2 sigmoid(2x) - 1
        torch.lerp(hp[:, :, 2:-2], c, g[:, hid:, 1:-1], out=dst[:, :, r0 + 2 : r1 + 2])


def _combine(fwd, bwd, out, spans, scratch=None) -> None:
    """``out`` (h, W) = max over channels of h_fwd + h_bwd (row-padded states). The sum goes into
    ``fwd`` or, when given, into ``scratch`` (hid, >= chunk rows, W), leaving both states intact."""
    for r0, r1 in spans:
        f, b = fwd[0, :, r0 + 2 : r1 + 2], bwd[0, :, r0 + 2 : r1 + 2]
        t = f.add_(b) if scratch is None else torch.add(f, b, out=scratch[:, : r1 - r0])
        _channel_max(t, out[r0:r1])


def _recurrent_rows(fp, cells, hid: int, fmt, segment: int | None = None):
    """Bidirectional ConvGRU over (N, C, h + 4, W) features whose first and last 2 rows are
    padding (zeros at the image border), walking each plane in row chunks that stay in cache.

    The forward states of the planes of one segment (``segment`` planes; all N when None) are
    held, plus a checkpoint at the end of every earlier segment; the backward pass walks the
    segments from the last, recomputes each one's forward states from its checkpoint (the last
    segment's are still there), keeps two backward states and writes the logits
    max_c(h_fwd + h_bwd) chunk by chunk.
    """
    N, C, H4, W = fp.shape
    H = H4 - 4
    spans = _spans(fp)
    k = N if segment is None or segment >= N else int(segment)
    nseg = -(-N // k)
    last = (nseg - 1) * k  # first plane of the last segment
    seg = _row_padded((min(k, N), hid, H, W), fp, fmt)
    ckpt = _row_padded((nseg - 1, hid, H, W), fp, fmt) if nseg > 1 else None
    roll = [_row_padded((1, hid, H, W), fp, fmt) for _ in range(2)] if nseg > 1 else None
    back = [_row_padded((1, hid, H, W), fp, fmt) for _ in range(2)]
    out = torch.empty((N, H, W), dtype=fp.dtype, device=fp.device)

    def forward_slot(n):
        """Where the forward pass leaves h_n: the last segment's buffer, a checkpoint, or a spare."""
        if n >= last:
            return seg[n - last : n - last + 1]
        if (n + 1) % k == 0:
            return ckpt[(n + 1) // k - 1 : (n + 1) // k]
        return roll[n % 2]

    prev = None
    for n in range(N):
        dst = forward_slot(n)
        _step(fp, spans, hid, dst, prev, n, cells[0])
        prev = dst
    i = 0
    for j in range(nseg - 1, -1, -1):
        a, b = j * k, min(N, (j + 1) * k)
        if j < nseg - 1:  # recompute this segment's forward states from its checkpoint
            prev = ckpt[j - 1 : j] if j else None
            for n in range(a, b):
                _step(fp, spans, hid, seg[n - a : n - a + 1], prev, n, cells[0])
                prev = seg[n - a : n - a + 1]
        for n in range(b - 1, a - 1, -1):
            cur, bprev = back[i % 2], back[(i + 1) % 2]
            _step(fp, spans, hid, cur, bprev if i else None, n, cells[1])
            _combine(seg[n - a : n - a + 1], cur, out[n], spans)
            i += 1
    return out


def _recurrent_two_way(fp, cells, hid: int, fmt):
    """:func:`_recurrent_rows` (every state held) with the two directions in two threads.

    Each direction leaves its state h_n in a buffer of its own; whichever direction reaches
    plane n second adds the other's state and writes the logits, and both buffers are dropped.
    The directions meet in the middle, so about N states are held at once, as with one thread,
    and unlike row strips no halo rows are computed twice. Caller: torch single-threaded.
    """
    import threading

    N, C, H4, W = fp.shape
    H = H4 - 4
    spans = _spans(fp)
    out = torch.empty((N, H, W), dtype=fp.dtype, device=fp.device)
    lock = threading.Lock()
    held = ({}, {})  # per direction: plane -> state still waiting for the other direction

    def walk(d):
        with torch.inference_mode():
            # (the states are read by the other direction's next step: sums go to a scratch buffer)
            scratch = torch.empty((hid, max(r1 - r0 for r0, r1 in spans), W), dtype=fp.dtype, device=fp.device)
            scratch = scratch.permute(1, 2, 0).contiguous().permute(2, 0, 1) if fmt == torch.channels_last else scratch
            prev = None
            for n in (range(N) if d == 0 else range(N - 1, -1, -1)):
                cur = _row_padded((1, hid, H, W), fp, fmt)
                _step(fp, spans, hid, cur, prev, n, cells[d])
                with lock:
                    other = held[1 - d].pop(n, None)
                    if other is None:
                        held[d][n] = cur
                if other is not None:
                    _combine(other, cur, out[n], spans, scratch)
                prev = cur

    _run(walk, (0, 1), 2)
    return out


def _channel_max(t, out):
    """``out = t.amax(dim=0)`` for a (C, h, w) tensor, as a tree of elementwise maxima (equal
    values; ``amax`` over the channels, which channels_last makes the innermost dimension,
    measured 2.6x slower)."""
    while t.shape[0] > 2 and t.shape[0] % 2 == 0:
        half = t.shape[0] // 2
        t = torch.maximum(t[:half], t[half:])
    if t.shape[0] == 2:
        torch.maximum(t[0], t[1], out=out)
    else:
        torch.amax(t, dim=0, out=out)


def _strips(H: int, rows: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """Row strips (y0, y1) of at most ``rows`` rows with their haloed windows (a, b)."""
    if rows >= H:
        yield 0, H, 0, H
        return
    n = math.ceil(H / rows)
    step = math.ceil(H / n)
    for y0 in range(0, H, step):
        y1 = min(H, y0 + step)
        yield y0, y1, max(0, y0 - halo), min(H, y1 + halo)


def pad_to_multiple(x, multiple: int = MULTIPLE):
    """Reflection-pad the last two axes up to a multiple (replicate where too small to reflect)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if ph == 0 and pw == 0:
        return x, (H, W)
    mode = "reflect" if ph < H and pw < W else "replicate"
    shape = x.shape
    y = F.pad(x.reshape(-1, 1, H, W), (0, pw, 0, ph), mode=mode)
    return y.reshape(shape[:-2] + y.shape[-2:]), (H, W)


# --------------------------------------------------------------------------------------------
# stage 3: focus-map regression
# --------------------------------------------------------------------------------------------
def expectation(logits, dim: int = -3):
    """E = sum_n (n + 1) P_n with P = softmax over planes (1-based, as the official code)."""
    p = torch.softmax(logits, dim=dim)
    n = logits.shape[dim]
    shape = [1] * logits.ndim
    shape[dim] = n
    w = torch.arange(1, n + 1, dtype=logits.dtype, device=logits.device).reshape(shape)
    return (p * w).sum(dim=dim)


def official_index(logits):
    """The official rule on (B, N, H, W) logits: (depth normalised (B, 1, H, W), index (B, H, W)).

    E is min-max normalised over each whole image, scaled by N - 1 and rounded.
    """
    N = logits.shape[1]
    e = expectation(logits, dim=1)[:, None]
    lo = e.amin(dim=(2, 3), keepdim=True)
    hi = e.amax(dim=(2, 3), keepdim=True)
    dm = (e - lo) / (hi - lo)
    return dm, torch.round(dm * (N - 1))[:, 0].to(torch.int64)


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
def clean_state_dict(sd: dict) -> dict:
    """Strip the DataParallel ``module.`` prefix."""
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_model(path: str | Path, *, device="cpu") -> StackMFFV2:
    """A StackMFFV2 in eval mode with the weights in ``path`` (loaded strictly, weights only).

    ``path`` must already be trusted (hash-checked): see :mod:`napari_edof.nn.weights`.
    """
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    model = StackMFFV2()
    model.load_state_dict(clean_state_dict(sd), strict=True)
    return model.eval().to(device)
