"""A real OpenAI-compatible server for tests: llama.cpp's own HTTP server (the `xllamacpp` wheel)
serving a tiny Llama-architecture GGUF with RANDOM weights, written here with the `gguf` package
and the SentencePiece tokenizer that the `mistral-common` wheel ships (a Llama-2-style 32,000-piece
vocabulary), with the Llama-2 chat template of infra/vllm/. Free text from it is garbage;
grammar-constrained JSON is valid. Enough to test protocol, structure, repair, context limits
and prefix caching against a real server, offline and in seconds.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from service_kit import REPO, free_port, wait_http

TEMPLATE = REPO / "infra" / "vllm" / "llama-2-chat.jinja"
MODEL_ID = "tiny-random-llama"


def tokenizer_file() -> Path:
    """mistral_common/data/tokenizer.model.v1, located without importing mistral_common."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the tiny test model needs the `mistral-common` wheel (dev extra)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"


def build_gguf(
    out: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 128,
    n_ctx_train: int = 8192,
    seed: int = 0,
) -> Path:
    """Write a random-weight Llama GGUF (float32, about 17 MB) with a real SentencePiece vocab."""
    import gguf
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_file()))
    vocab = sp.vocab_size()
    tokens, scores, types = [], [], []
    for i in range(vocab):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny random llama (test only)")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(TEMPLATE.read_text("utf-8"))

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(vocab, n_embd))
    for b in range(n_layer):
        writer.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{b}.{name}.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(n_embd, np.float32))
        writer.add_tensor(f"blk.{b}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{b}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{b}.ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("output.weight", weight(vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


SERVE = """
import signal, sys, threading, xllamacpp
model, port, n_ctx, n_parallel, template = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), open(sys.argv[5], encoding="utf-8").read()
params = xllamacpp.CommonParams()
params.model.path = model
params.model_alias = {sys.argv[6]}
params.n_ctx = n_ctx
params.n_parallel = n_parallel
params.hostnames = ["127.0.0.1"]
params.port = port
params.use_jinja = True
params.chat_template = template
params.cpuparams.n_threads = 1
params.cpuparams_batch.n_threads = 1
server = xllamacpp.Server(params)
print("listening", server.listening_address, flush=True)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
done.wait()
"""


class LlamaServer:
    """llama.cpp's server in a child process on a free port: `n_ctx` is the total over the slots."""

    def __init__(
        self, model: Path, *, n_ctx: int = 4096, n_parallel: int = 1, log: Path | None = None
    ) -> None:
        self.model, self.n_ctx, self.n_parallel, self.log = model, n_ctx, n_parallel, log
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def context_per_slot(self) -> int:
        return self.n_ctx // self.n_parallel

    def start(self) -> LlamaServer:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVE,
                str(self.model),
                str(self.port),
                str(self.n_ctx),
                str(self.n_parallel),
                str(TEMPLATE),
                MODEL_ID,
            ],
            stdout=out,
            stderr=out,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{self.port}/health", timeout_s=60, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
