"""easytune_lab.finetune"""
