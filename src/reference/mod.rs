//! Plain f32 CPU reference of the forward pass (being written).
