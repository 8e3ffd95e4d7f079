"""Image quality and model efficiency metrics."""

from srcore.metrics.quality import psnr_rgb, psnr_ssim_y, psnr_y, rgb_to_y, ssim, ssim_y

__all__ = ["psnr_rgb", "psnr_ssim_y", "psnr_y", "rgb_to_y", "ssim", "ssim_y"]
