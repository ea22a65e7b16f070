"""easytune_lab.motion"""
