/**
 * Judge Q training on WebGPU: the soft-row forward, the MSE/KL loss and the hand-written reverse mode
 * down to the soft embeddings as WGSL kernels (float32), matching core/train's CPU gradients.
 */
export { createGpuTrainer, GpuTrainer, type GpuTrainerOptions, type LossAndGrad } from "./trainer.ts";
export { fitBackend, gpuFitBackend, trainStepGpu } from "./fit_gpu.ts";
export { unsupported as unsupportedTrainShape } from "./shape.ts";
