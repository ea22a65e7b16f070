"""easytune_lab.diffusion"""
