"""How well Watchkeeper does, measured: root-cause ranking on the PetShop dataset (`petshop`) and
the fault drill, every failure class injected on the real stack (`drill`).

At the top of the layers, beside `local/` (the drill runs its stack and demo traffic).
"""
