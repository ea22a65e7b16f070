"""easytune_lab.reward"""
