"""Helpers for the tests (pytest collects nothing here): engine server processes (`server`), the chat
app's pilot tests (`app`), stored chats (`chats`), the independent model oracle (`oracle`), the
torchrun worker of the tp tests (`tp_worker`), the second-user privacy checks (`privacy`) and the CUDA
kernels a call launches (`launches`); kernel checks under Triton's CPU interpreter (`interpreter`)."""
