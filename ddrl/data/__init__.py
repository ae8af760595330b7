"""Experience as Spark data: trajectories that tasks write as files (``ddrl.data.trajectories``), and trained
policies that score DataFrames (``ddrl.data.score``)."""
