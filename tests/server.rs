//! Tests of the OpenAI-compatible server (feature `server`).
