"""easytune_lab.data"""
