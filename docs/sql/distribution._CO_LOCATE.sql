SELECT create_distributed_table($1, $2, colocate_with => $3)
