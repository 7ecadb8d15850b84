//! Troupe's GPU support: device detection, `num_gpus` resources, actors that
//! own a `tch::Device`, tensors as objects.
//!
//! Not implemented yet (see the GPU issue): it needs a project-scripted
//! libtorch install, and will sit behind the facade's `gpu` feature so that
//! the default build never needs libtorch.
